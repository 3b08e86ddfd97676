"""modules/sd_samplers_common.py: sampler base, step callback and launch bookkeeping."""

import inspect
from dataclasses import dataclass, field

import torch

from modules import shared
from modules.shared import opts, state


class InterruptedException(BaseException):
    pass


@dataclass
class SamplerData:
    name: str
    constructor: object
    aliases: list = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def total_steps(self, steps):
        return steps * 2 if self.options.get("second_order", False) else steps


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def apply_refiner(cfg_denoiser, sigma=None):
    """WebUI 1.10.1: called first thing in every CFGDenoiser.forward. Past `refiner_switch_at`
    (a share of the model calls with `refiner_switch_by_sample_steps`, else read off the
    call's sigma as (999 − nearest timestep) / 1000), loads the refiner checkpoint, re-encodes
    the prompt (`p.setup_conds()`) and drops the denoiser's wrapped model; with hires fix the
    `hires_fix_refiner_pass` option picks the passes it may switch in."""
    from modules import sd_models

    p = cfg_denoiser.p
    if opts.refiner_switch_by_sample_steps or sigma is None:
        completed = cfg_denoiser.step / cfg_denoiser.total_steps
        p.extra_generation_params["Refiner switch by sampling steps"] = True
    else:
        try:
            timestep = torch.argmin(torch.abs(cfg_denoiser.inner_model.sigmas.to(sigma.device) - torch.max(sigma)))
        except AttributeError:  # timestep samplers: sigma is the timestep
            timestep = torch.max(sigma).to(dtype=int)
        completed = (999 - timestep) / 1000
    switch_at = p.refiner_switch_at
    info = getattr(p, "refiner_checkpoint_info", None)
    if switch_at is not None and completed < switch_at:
        return False
    if info is None or getattr(shared.sd_model, "sd_checkpoint_info", None) == info:
        return False
    if getattr(p, "enable_hr", False):
        second = p.is_hr_pass
        if opts.hires_fix_refiner_pass == "first pass" and second:
            return False
        if opts.hires_fix_refiner_pass == "second pass" and not second:
            return False
        if opts.hires_fix_refiner_pass != "second pass":
            p.extra_generation_params["Hires refiner"] = opts.hires_fix_refiner_pass
    p.extra_generation_params["Refiner"] = info.short_title
    p.extra_generation_params["Refiner switch at"] = switch_at
    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=info)
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.sampler_noises = None
        self.stop_at = None
        self.eta = None
        self.config = None
        self.last_latent = None
        self.s_min_uncond = None
        self.s_noise = 1.0
        self.eta_default = 1.0
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.p = None

    def callback_state(self, d):
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p):
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, "mask", None)
        self.model_wrap_cfg.nmask = getattr(p, "nmask", None)
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if getattr(p, "eta", None) is not None else opts.eta_ancestral
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        # As 1.10.1: the sampler's eta from the setting (or p.eta), s_noise from opts.s_noise
        # for the samplers that take it, each written to the infotext when not the default.
        kwargs = {}
        params = inspect.signature(self.func).parameters
        if "eta" in params:
            if self.eta != self.eta_default:
                p.extra_generation_params["Eta"] = self.eta
            kwargs["eta"] = self.eta
        if "s_noise" in self.extra_params and "s_noise" in params and opts.s_noise != self.s_noise:
            kwargs["s_noise"] = opts.s_noise
            p.extra_generation_params["Sigma noise"] = opts.s_noise
        return kwargs

    def create_noise_sampler(self, x, sigmas, p):
        """The Brownian-tree noise of the SDE samplers, seeded by the batch's seeds so that an
        image does not depend on the batch it is made in."""
        if opts.no_dpmpp_sde_batch_determinism:
            return None
        from k_diffusion.sampling import BrownianTreeNoiseSampler

        sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
        seeds = p.all_seeds[p.iteration * p.batch_size:(p.iteration + 1) * p.batch_size]
        return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seeds)
