"""modules/sd_samplers_kdiffusion.py as Forge has it: the k-diffusion samplers of the A1111
stand-in (same list, options, launch and step callback), with Forge's differences — the
CFG denoiser's inner model is a `ForgeScheduleLinker` over the loaded UNet's predictor
(sigmas and the σ ↔ t map come from it; its `inner_model` is `shared.sd_model`), the UNet
is loaded by `sampling_prepare` before sampling, and the start noise is made by the
predictor's `noise_scaling` (the same x + σ·noise for ε and v models)."""

from pathlib import Path

import k_diffusion.sampling
import torch
from backend.sampling.sampling_function import sampling_prepare

_A1111 = Path(__file__).resolve().parents[2] / "webui_stub" / "modules" / "sd_samplers_kdiffusion.py"
exec(compile(_A1111.read_text(), str(_A1111), "exec"), globals())  # noqa: S102 - the A1111 stand-in's samplers


class ForgeScheduleLinker(torch.nn.Module):
    """k_diffusion/external.py (Forge's vendored copy)."""

    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    @property
    def sigmas(self):
        return self.predictor.sigmas

    def get_sigmas(self, n=None):
        if n is None:
            return k_diffusion.sampling.append_zero(self.sigmas.flip(0))
        if self.predictor.prediction_type == "const" and self.predictor.timestep(self.sigmas[-1:]) == self.sigmas[-1]:
            # Flux (its timestep is σ, which the linear t-ramp below does not fit): the
            # Simple schedule Forge's Flux preset uses (modules/sd_schedulers.py `simple_scheduler`).
            step = len(self.sigmas) / n
            return torch.tensor([float(self.sigmas[-(1 + int(i * step))]) for i in range(n)] + [0.0])
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return k_diffusion.sampling.append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        return self.predictor.timestep(sigma)

    def t_to_sigma(self, t):
        return self.predictor.sigma(t)


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):  # noqa: F821 - from the exec above
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = ForgeScheduleLinker(shared.sd_model.forge_objects.unet.model.predictor)  # noqa: F821
            self.model_wrap.inner_model = shared.sd_model  # noqa: F821
        return self.model_wrap


_a1111_sample = KDiffusionSampler.sample  # noqa: F821
_a1111_sample_img2img = KDiffusionSampler.sample_img2img  # noqa: F821


def _sample(self, p, x, *args, **kwargs):
    sampling_prepare(self.model_wrap.inner_model.forge_objects.unet, x)
    return _a1111_sample(self, p, x, *args, **kwargs)


def _sample_img2img(self, p, x, *args, **kwargs):
    sampling_prepare(self.model_wrap.inner_model.forge_objects.unet, x)
    return _a1111_sample_img2img(self, p, x, *args, **kwargs)


KDiffusionSampler.sample = _sample  # noqa: F821
KDiffusionSampler.sample_img2img = _sample_img2img  # noqa: F821
