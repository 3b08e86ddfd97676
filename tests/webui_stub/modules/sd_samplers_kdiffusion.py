"""modules/sd_samplers_kdiffusion.py over the real k-diffusion samplers."""

import inspect

import k_diffusion.external
import k_diffusion.sampling
import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared


def _restart_like(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Heun steps, calling back after the first model call of a step as the WebUI's
    restart sampler does (its restart segments are left out here)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        old, new = sigmas[i], sigmas[i + 1]
        denoised = model(x, old * s_in, **extra_args)
        d = (x - denoised) / old
        if callback is not None:
            callback({"x": x, "i": i, "sigma": new, "sigma_hat": old, "denoised": denoised})
        if new == 0:
            x = x + d * (new - old)
        else:
            x2 = x + d * (new - old)
            d2 = (x2 - model(x2, new * s_in, **extra_args)) / new
            x = x + (d + d2) / 2 * (new - old)
    return x


samplers_k_diffusion = [
    ("DPM++ 2M", "sample_dpmpp_2m", {"scheduler": "karras"}),
    ("DPM++ SDE", "sample_dpmpp_sde", {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", {"scheduler": "exponential", "brownian_noise": True}),
    ("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", {"scheduler": "exponential", "brownian_noise": True,
                                                  "solver_type": "heun"}),
    ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", {"scheduler": "exponential", "discard_next_to_last_sigma": True,
                                             "brownian_noise": True}),
    ("Euler a", "sample_euler_ancestral", {"uses_ensd": True}),
    ("Euler", "sample_euler", {}),
    ("LMS", "sample_lms", {}),
    ("Heun", "sample_heun", {"second_order": True}),
    ("DPM2", "sample_dpm_2", {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    ("DPM2 a", "sample_dpm_2_ancestral", {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", {"scheduler": "karras", "second_order": True}),
    ("DPM fast", "sample_dpm_fast", {}),
    ("Restart", _restart_like, {"scheduler": "karras", "second_order": True}),
]

# The samplers' optional arguments the WebUI fills from its settings (here: s_noise only).
sampler_extra_params = {
    "sample_dpm_fast": ["s_noise"],
    "sample_dpm_2_ancestral": ["s_noise"],
    "sample_dpmpp_2s_ancestral": ["s_noise"],
    "sample_dpmpp_sde": ["s_noise"],
    "sample_dpmpp_2m_sde": ["s_noise"],
    "sample_dpmpp_3m_sde": ["s_noise"],
    "sample_euler_ancestral": [],
}


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None and getattr(shared.sd_model, "create_denoiser", None) is not None:
            self.model_wrap = shared.sd_model.create_denoiser()  # SD3: its own flow denoiser
        if self.model_wrap is None:
            wrap = k_diffusion.external.CompVisVDenoiser if shared.sd_model.parameterization == "v" else k_diffusion.external.CompVisDenoiser
            self.model_wrap = wrap(shared.sd_model, quantize=False)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.extra_params = sampler_extra_params.get(funcname, []) if isinstance(funcname, str) else []
        self.options = options or {}
        self.func = funcname if callable(funcname) else getattr(k_diffusion.sampling, funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        discard = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        steps += 1 if discard else 0
        scheduler = self.config.options.get("scheduler")
        if scheduler in ("karras", "exponential"):
            make = k_diffusion.sampling.get_sigmas_karras if scheduler == "karras" else k_diffusion.sampling.get_sigmas_exponential
            sigmas = make(n=steps, sigma_min=float(self.model_wrap.sigmas[0]), sigma_max=float(self.model_wrap.sigmas[-1]))
        else:
            sigmas = self.model_wrap.get_sigmas(steps)
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    def _kwargs(self, p, x, sigmas, steps, img2img=False, schedule=None):
        params = inspect.signature(self.func).parameters
        kw = self.initialize(p)
        if "sigmas" in params:
            kw["sigmas"] = sigmas
        if "sigma_min" in params:
            # img2img: the tail of the schedule, its last non-zero sigma as the minimum.
            kw["sigma_min"] = float(sigmas[-2]) if img2img else float(self.model_wrap.sigmas[0])
            kw["sigma_max"] = float(sigmas[0]) if img2img else float(self.model_wrap.sigmas[-1])
        if "n" in params:
            kw["n"] = steps
        if self.config.options.get("brownian_noise", False):
            kw["noise_sampler"] = self.create_noise_sampler(x, sigmas if schedule is None else schedule, p)
        if self.config.options.get("solver_type") == "heun":
            kw["solver_type"] = "heun"
        return kw

    def _extra_args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        kw = self._kwargs(p, x, sigmas, steps)
        self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        self.last_latent = x
        return self.launch_sampling(
            steps,
            lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=True,
                              callback=self.callback_state, **kw),
        )

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        add_noise = getattr(shared.sd_model, "add_noise_to_latent", None)  # SD3: (1 − σ)·x + σ·noise
        xi = add_noise(x, noise, sigma_sched[0]) if add_noise is not None else x + noise * sigma_sched[0]
        kw = self._kwargs(p, x, sigma_sched, t_enc + 1, img2img=True, schedule=sigmas)
        self.model_wrap_cfg.init_latent = x
        self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        self.last_latent = x
        return self.launch_sampling(
            t_enc + 1,
            lambda: self.func(self.model_wrap_cfg, xi, extra_args=self.sampler_extra_args, disable=True,
                              callback=self.callback_state, **kw),
        )
