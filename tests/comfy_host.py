"""The ComfyUI stand-in (tests/comfy_stub, ComfyUI 0.8.0: its README says what it mirrors) with
the tiny models as checkpoints: `checkpoint(kind)` → (MODEL, CLIP) as CheckpointLoaderSimple
gives them; `txt2img` runs the KSampler node as a workflow would, `custom` the
SamplerCustomAdvanced path with a guider. No WebUI stand-in is involved."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

STUB = Path(__file__).resolve().parent / "comfy_stub"
if str(STUB) not in sys.path:
    sys.path.insert(0, str(STUB))

import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import nodes  # noqa: E402
import tiny_models  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402
from comfy_extras import nodes_custom_sampler, nodes_flux  # noqa: E402

CPU = torch.device("cpu")
_MODELS: dict = {}


def checkpoint(kind: str = "sd1"):
    """(MODEL, CLIP) of a tiny checkpoint: "sd1", "sdxl", "v" (v-prediction), "quarter" (SD 1.x
    with cross-attention on the latent/4 grid, where the implicit masks read), "flux" (a
    flow model with a distilled guidance input, ModelSamplingFlux) or "flux-bfl" (the same
    sampling over a tiny transformer in Black Forest Labs' layout, as ComfyUI's Flux) or "sd3"
    (SD3's MMDiT layout, ModelSamplingDiscreteFlow)."""
    if kind not in _MODELS:
        if kind == "quarter":
            ldm = tiny_models.TinyLDM("sd1", seed=0, unet_model=tiny_models.quarter_unet(seed=2))
        else:
            ldm = tiny_models.TinyLDM("sd1" if kind.startswith("flux") or kind == "sd3" else kind, seed=0)
        if kind == "flux":
            base = comfy.model_base.Flux(tiny_models.TinyFlow(seed=3), comfy.model_sampling.model_sampling(prediction="flux"))
        elif kind == "sd3":
            from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

            torch.manual_seed(6)
            network = OpenAISignatureMMDITWrapper(in_channels=4, context_dim=32, adm_in_channels=32).eval()
            base = comfy.model_base.SD3(network, comfy.model_sampling.model_sampling(prediction="sd3"))
        elif kind == "flux-bfl":
            from comfy.ldm.flux.model import Flux

            torch.manual_seed(4)
            network = Flux(in_channels=4, vec_in_dim=32, context_in_dim=32, depth=4, depth_single_blocks=1).eval()
            base = comfy.model_base.Flux(network, comfy.model_sampling.model_sampling(prediction="flux"))
        else:
            cls = comfy.model_base.SDXL if kind == "sdxl" else comfy.model_base.BaseModel
            base = cls(UNetModel(ldm.unet), comfy.model_sampling.model_sampling(ldm.alphas_cumprod, "v" if kind == "v" else "eps"))
        _MODELS[kind] = (comfy.model_patcher.ModelPatcher(base, load_device=CPU, offload_device=CPU), comfy.sd.CLIP(ldm))
    return _MODELS[kind]


def encode(clip, text: str):
    return nodes.CLIPTextEncode().encode(clip, text)[0]


def clip_columns(clip, text: str) -> list[int]:
    """The text's own token columns, as the tokenizer's word ids mark them."""
    return [j for j, token in enumerate(clip.tokenize(text, return_word_ids=True)["l"][0]) if token[2] != 0]


def latent(size: int = 64, batch: int = 1) -> dict:
    return nodes.EmptyLatentImage().generate(size, size, batch)[0]


def txt2img(model, clip, prompt="a cat", negative="", seed=1, steps=6, cfg=7.0, sampler="euler",
            scheduler="normal", size=64, batch=1, denoise=1.0, start=None) -> torch.Tensor:
    """The KSampler node's LATENT samples for this prompt (`start`: a LATENT to denoise from)."""
    with torch.no_grad():
        return nodes.KSampler().sample(model, seed, steps, cfg, sampler, scheduler, encode(clip, prompt),
                                       encode(clip, negative), start or latent(size, batch), denoise)[0]["samples"]


def flux_positive(clip, prompt="a cat", guidance=3.5):
    return nodes_flux.FluxGuidance().append(encode(clip, prompt), guidance)[0]


def custom(guider, sampler="euler", steps=6, seed=1, size=64, scheduler="normal") -> torch.Tensor:
    """SamplerCustomAdvanced with `guider` (KSamplerSelect, BasicScheduler, RandomNoise)."""
    import comfy.sample

    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), scheduler, steps)
    start = latent(size)
    noise = comfy.sample.prepare_noise(start["samples"], seed)
    with torch.no_grad():
        return nodes_custom_sampler.sample_custom(noise, guider, comfy.samplers.sampler_object(sampler), sigmas, start,
                                                  seed)["samples"]


def calls(model) -> list[int]:
    """The rows of each model call made so far on this checkpoint."""
    return model.model.calls
