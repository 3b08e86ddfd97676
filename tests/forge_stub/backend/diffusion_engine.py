"""backend/diffusion_engine/*.py: `p.sd_model` on Forge is a ForgeDiffusionEngine, not the
LDM itself. What the stand-in's engine keeps of it: `forge_objects` (the UnetPatcher at
`.unet`, whose `.model` is the KModel with the predictor), the copies processing resets it
from before every sampling pass (`forge_objects_original`,
`forge_objects_after_applying_lora`, `shallow_copy`), `get_learned_conditioning(prompts)`
(SD 1.x: a tensor; SDXL: {crossattn, vector}), `is_sdxl`, `latent_channels`. What it lacks,
as Forge's does: `cond_stage_model`, `cond_stage_model_empty_prompt`, `apply_model`.

It wraps a tests/tiny_models model (its UNet, text encoder and schedule). `model` stays for
the stand-in's processing (the inpainting checks read `conditioning_key`)."""

from backend.modules.k_model import KModel
from backend.modules.k_prediction import Prediction
from backend.patcher.unet import UnetPatcher


class ForgeObjects:
    def __init__(self, unet, clip=None, vae=None):
        self.unet, self.clip, self.vae = unet, clip, vae

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae)


class _Network:
    """The diffusion model's forward as Forge's UNet takes it (ldm argument names)."""

    def __init__(self, ldm):
        self.ldm = ldm

    def __call__(self, x, timesteps, context=None, control=None, transformer_options=None, y=None, **kwargs):
        unet = self.ldm.unet
        return unet(x, timesteps, encoder_hidden_states=context, class_labels=y).sample


class ForgeEngine:
    def __init__(self, ldm):
        self.ldm = ldm
        kind = getattr(ldm, "kind", "sd1")
        predictor = Prediction(ldm.alphas_cumprod, "v_prediction" if kind == "v" else "epsilon")
        self.forge_objects_original = ForgeObjects(UnetPatcher(KModel(_Network(ldm), predictor)))
        self.forge_objects = self.forge_objects_original.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects_original.shallow_copy()
        self.is_sdxl = bool(getattr(ldm, "is_sdxl", False))
        self.is_sd1 = not self.is_sdxl
        self.latent_channels = 4
        self.model = ldm.model
        self.cond_stage_key = "txt"
        self.sd_checkpoint_info = getattr(ldm, "sd_checkpoint_info", None)

    def get_learned_conditioning(self, prompts):
        return self.ldm.get_learned_conditioning(prompts)
