"""modules/sd_samplers_kdiffusion.py as reForge has it with its default `sd_sampling` option
"A1111": the sampler functions of the A1111 k-diffusion (reForge's vendored
`k_diff/k_diffusion/sampling.py`; here the real `k_diffusion.sampling`, as in the A1111
stand-in, whose list, options and launch are reused), `model_wrap` = A1111's
`CompVisDenoiser` / `CompVisVDenoiser` over `shared.sd_model` with
`quantize=opts.enable_quantization` (default off) — used for the sigmas only: the model is
called through `forge_objects.unet.model` (BaseModel) by the CFG denoiser. `sample` and
`sample_img2img` load the UNet with `sampling_prepare` first and call `sampling_cleanup`
after. Not mirrored: reForge's extra samplers (Euler A2, Dy, SMEA, Negative), its scheduler
list and `sd_sampling = "ldm patched (Comfy)"`."""

from pathlib import Path

import k_diffusion.external
from modules_forge.forge_sampler import sampling_cleanup, sampling_prepare

_A1111 = Path(__file__).resolve().parents[2] / "webui_stub" / "modules" / "sd_samplers_kdiffusion.py"
exec(compile(_A1111.read_text(), str(_A1111), "exec"), globals())  # noqa: S102 - the A1111 stand-in's samplers


# KDiffusionSampler.__init__ looks this name up when it runs: it makes this one.
class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):  # noqa: F821 - from the exec above
    @property
    def inner_model(self):
        if self.model_wrap is None:
            constructor = getattr(shared.sd_model, "create_denoiser", None)  # noqa: F821
            if constructor is not None:
                self.model_wrap = constructor()
            else:
                v = shared.sd_model.parameterization == "v"  # noqa: F821
                wrap = k_diffusion.external.CompVisVDenoiser if v else k_diffusion.external.CompVisDenoiser
                self.model_wrap = wrap(shared.sd_model, quantize=getattr(shared.opts, "enable_quantization", False))  # noqa: F821
        return self.model_wrap


_a1111_sample = KDiffusionSampler.sample  # noqa: F821
_a1111_sample_img2img = KDiffusionSampler.sample_img2img  # noqa: F821


def _sample(self, p, x, *args, **kwargs):
    unet = self.model_wrap.inner_model.forge_objects.unet
    sampling_prepare(unet, x)
    samples = _a1111_sample(self, p, x, *args, **kwargs)
    sampling_cleanup(unet)
    return samples


def _sample_img2img(self, p, x, *args, **kwargs):
    unet = self.model_wrap.inner_model.forge_objects.unet
    sampling_prepare(unet, x)
    samples = _a1111_sample_img2img(self, p, x, *args, **kwargs)
    sampling_cleanup(unet)
    return samples


KDiffusionSampler.sample = _sample  # noqa: F821
KDiffusionSampler.sample_img2img = _sample_img2img  # noqa: F821
