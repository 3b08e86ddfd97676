"""modules/sd_samplers_cfg_denoiser.py as Forge has it: `forward` takes B image rows (no
cond/uncond row layout), fires `on_cfg_denoiser` (x, sigma, image_cond, text_cond and
text_uncond are read back) but never `on_cfg_denoised`, sets CFG scale 1 for the steps that
skip the uncond (skip_early_cond, NGMS), hands everything to the backend's
`sampling_function`, blends the inpainting mask into the input (with fresh noise through the
predictor) and into the guided result (with the scripts' on_mask_blend), then fires
`on_cfg_after_cfg`."""

from pathlib import Path

import torch
from backend.sampling.sampling_function import sampling_function

from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoiser_callback,
)
from modules.scripts import MaskBlendArgs
from modules.shared import state

# Forge keeps A1111's CFGDenoiser attributes and helpers; only `forward` differs.
_A1111 = Path(__file__).resolve().parents[2] / "webui_stub" / "modules" / "sd_samplers_cfg_denoiser.py"
exec(compile(_A1111.read_text(), str(_A1111), "exec"), globals())  # noqa: S102 - the A1111 stand-in's denoiser


def _forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
    if state.interrupted or state.skipped:
        raise sd_samplers_common.InterruptedException

    if sd_samplers_common.apply_refiner(self, x):
        cond = self.sampler.sampler_extra_args["cond"]
        uncond = self.sampler.sampler_extra_args["uncond"]

    cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
    uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None

    if self.mask is not None:
        # A new draw from the global RNG at every call, the kept region of the input replaced
        # by the photo noised with it (dfdcbab6, forward): A1111 gives the model the sampler's
        # latents there.
        predictor = self.inner_model.inner_model.forge_objects.unet.model.predictor
        noisy = predictor.noise_scaling(sigma[:, None, None, None], torch.randn_like(self.init_latent).to(self.init_latent),
                                        self.init_latent, max_denoise=False)
        x = x * self.nmask + noisy * self.mask

    params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)
    cfg_denoiser_callback(params)

    if getattr(self.p, "is_hr_pass", False) and getattr(self.p, "hr_cfg", None) is not None:
        cond_scale = self.p.hr_cfg

    opts = shared.opts
    if opts.skip_early_cond > 0 and self.step / self.total_steps <= opts.skip_early_cond:
        cond_scale = 1.0
    elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
        cond_scale = 1.0

    denoised, cond_pred, uncond_pred = sampling_function(self, denoiser_params=params, cond_scale=cond_scale,
                                                         cond_composition=cond_composition)

    if self.mask is not None:
        blended = denoised * self.nmask + self.init_latent * self.mask
        if self.p.scripts is not None:
            mba = MaskBlendArgs(denoised, self.nmask, self.init_latent, self.mask, blended, denoiser=self, sigma=sigma)
            self.p.scripts.on_mask_blend(self.p, mba)
            blended = mba.blended_latent
        denoised = blended

    self.sampler.last_latent = denoised
    after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
    cfg_after_cfg_callback(after)
    denoised = after.x

    self.step += 1
    return denoised


CFGDenoiser.forward = _forward  # noqa: F821
