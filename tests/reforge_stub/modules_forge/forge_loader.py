"""modules_forge/forge_loader.py: `ForgeSD(unet, clip, vae, clipvision)` with `shallow_copy()`,
and what `load_model_for_a1111` leaves on the A1111 model: `forge_objects`,
`forge_objects_original` and `forge_objects_after_applying_lora` (processing resets
`forge_objects` from the last before every `process_before_every_sampling`), `is_sd1`,
`is_sdxl`, `latent_channels`. The A1111 model keeps everything else (`apply_model`,
`alphas_cumprod`, `get_learned_conditioning`, `cond_stage_model_empty_prompt`, …).

`load_model_for_a1111(ldm)` (stand-in): a SHALLOW COPY of a tests/tiny_models model — same
class, same modules and weights — carrying those attributes, so the A1111 stand-in sharing
the process never sees them. Its `forge_objects.unet` is a UnetPatcher over a BaseModel
whose diffusion model is the tiny model's UNet and whose predictor (eps or v) has the
model's sigmas. Not mirrored: `sd_model.model.diffusion_model` being replaced by the
ldm_patched UNet (the tiny model's `model` namespace is shared), clip/vae/clipvision (None)."""

import copy

from ldm_patched.ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm_patched.modules.model_base import BaseModel
from ldm_patched.modules.model_sampling import model_sampling

from modules_forge.unet_patcher import UnetPatcher


class ForgeSD:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeSD(self.unet, self.clip, self.vae, self.clipvision)


def load_model_for_a1111(ldm):
    sd_model = copy.copy(ldm)
    prediction = "v" if getattr(ldm, "parameterization", "eps") == "v" else "eps"
    base = BaseModel(UNetModel(ldm.unet), model_sampling(ldm.alphas_cumprod, prediction))
    forge_objects = ForgeSD(UnetPatcher(base), None, None, None)
    sd_model.forge_objects = forge_objects
    sd_model.forge_objects_original = forge_objects.shallow_copy()
    sd_model.forge_objects_after_applying_lora = forge_objects.shallow_copy()
    sd_model.is_sdxl = bool(getattr(ldm, "is_sdxl", False))
    sd_model.is_sd1 = not sd_model.is_sdxl
    sd_model.latent_channels = getattr(ldm, "latent_channels", 4)
    return sd_model
