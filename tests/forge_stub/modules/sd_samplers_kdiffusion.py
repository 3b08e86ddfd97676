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


# Forge's vendored k_diffusion/sampling.py (dfdcbab6): Euler a and DPM2 a run their
# rectified-flow variants when the model has a Flux predictor; restated here from it.
def _rf_coefficients(sigma, sigma_next, eta):
    downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
    sigma_down = sigma_next * downstep_ratio
    alpha_ip1 = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise_coeff = (sigma_next**2 - sigma_down**2 * alpha_ip1**2 / alpha_down**2)**0.5
    return sigma_down, alpha_ip1, alpha_down, renoise_coeff


@torch.no_grad()
def sample_euler_ancestral_RF(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                              noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = k_diffusion.sampling.default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            sigma_down, alpha_ip1, alpha_down, renoise_coeff = _rf_coefficients(sigmas[i], sigmas[i + 1], eta)
            sigma_down_i_ratio = sigma_down / sigmas[i]
            x = sigma_down_i_ratio * x + (1 - sigma_down_i_ratio) * denoised
            if eta > 0:
                x = (alpha_ip1 / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise_coeff
    return x


@torch.no_grad()
def sample_dpm_2_ancestral_RF(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                              noise_sampler=None):
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = k_diffusion.sampling.default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, alpha_ip1, alpha_down, renoise_coeff = _rf_coefficients(sigmas[i], sigmas[i + 1], eta)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        d = k_diffusion.sampling.to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
            d_2 = k_diffusion.sampling.to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigma_down - sigmas[i])
            x = (alpha_ip1 / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise_coeff
    return x


def _dispatching(plain, rectified):
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None):
        from backend.modules.k_prediction import PredictionFlux

        fn = rectified if isinstance(model.inner_model.predictor, PredictionFlux) else plain
        return fn(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler)

    sample.__name__ = plain.__name__
    return sample


_FORGE_SAMPLING = {
    "sample_euler_ancestral": _dispatching(k_diffusion.sampling.sample_euler_ancestral, sample_euler_ancestral_RF),
    "sample_dpm_2_ancestral": _dispatching(k_diffusion.sampling.sample_dpm_2_ancestral, sample_dpm_2_ancestral_RF),
}
_a1111_init = KDiffusionSampler.__init__  # noqa: F821


def _init(self, funcname, sd_model, options=None):
    _a1111_init(self, funcname, sd_model, options)
    if isinstance(funcname, str) and funcname in _FORGE_SAMPLING:
        self.func = _FORGE_SAMPLING[funcname]


KDiffusionSampler.__init__ = _init  # noqa: F821
