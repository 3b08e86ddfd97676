"""modules/sd_samplers_cfg_denoiser.py as reForge has it: `CFGDenoiser.forward(x, sigma, uncond,
cond, cond_scale, s_min_uncond, image_cond, **kwargs)` with B image rows.

- Fires `on_cfg_denoiser` (reads back only `text_cond`, `text_uncond`, `image_cond`; x and
  sigma are not), never `on_cfg_denoised`, then `on_cfg_after_cfg` (x read back).
- Hires pass: the CFG scale is `p.hr_cfg`.
- NGMS: `opts.s_min_uncond` (the argument is overwritten), on EVEN steps (A1111: odd) or
  all with `s_min_uncond_all`; otherwise skip-early-CFG (`step < opts.skip_early_cond` or
  `step / total ≤ opts.skip_early_cond`). Such steps call `sampling_function` with uncond
  None and CFG scale 1 (one call of B rows).
- A1111 conds → ldm_patched cond lists (forge_sampler), `c_concat` = the UnetPatcher's
  `extra_concat_condition` or `image_cond` when its batch and size match x, ControlNet's
  `control`, `conditioning_modifiers`; then `ldm_patched.modules.samplers.sampling_function(
  model, x, sigma, uncond, cond, cond_scale, model_options, seed)` with model =
  `forge_objects.unet.model`, model_options = the UnetPatcher's (or a copy updated by a
  `model_options=` keyword), seed = `p.seeds[0]`.
- `combine_denoised` is called on the guided B rows and returns the last `uncond.shape[0]`
  rows unchanged (an A1111 hijack of it is inert).
- Inpainting: blended after denoising (`denoised·nmask + init_latent·mask`, scripts'
  `on_mask_blend`), or with `mask_before_denoising` into the input with
  `init_latent + σ·randn`.
Not mirrored: `classic_ddim_eps_estimation` (the timestep samplers), dynamic clip skip,
previews. The refiner check is A1111's by sampling steps (reForge passes x where A1111
passes sigma, so it never reads the sigma)."""

from pathlib import Path

import torch
from ldm_patched.modules.conds import CONDRegular
from ldm_patched.modules.samplers import sampling_function
from modules_forge import forge_sampler

from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoiser_callback,
)
from modules.scripts import MaskBlendArgs
from modules.shared import state

# reForge keeps A1111's CFGDenoiser attributes and helpers; `forward` and `combine_denoised` differ.
_A1111 = Path(__file__).resolve().parents[2] / "webui_stub" / "modules" / "sd_samplers_cfg_denoiser.py"
exec(compile(_A1111.read_text(), str(_A1111), "exec"), globals())  # noqa: S102 - the A1111 stand-in's denoiser


def _combine_denoised(self, x_out, conds_list, uncond, cond_scale):
    return torch.clone(x_out[-uncond.shape[0]:])


def _forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond, **kwargs):
    if state.interrupted or state.skipped:
        raise sd_samplers_common.InterruptedException
    original_device, original_dtype = x.device, x.dtype

    if sd_samplers_common.apply_refiner(self):
        cond = self.sampler.sampler_extra_args["cond"]
        uncond = self.sampler.sampler_extra_args["uncond"]

    cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
    uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
    is_edit_model = (shared.sd_model.cond_stage_key == "edit" and self.image_cfg_scale is not None
                     and self.image_cfg_scale != 1.0)

    def apply_blend(current, noisy_initial_latent=None):
        initial = self.init_latent if noisy_initial_latent is None else noisy_initial_latent
        blended = current * self.nmask + initial * self.mask
        if self.p.scripts is not None:
            mba = MaskBlendArgs(current, self.nmask, self.init_latent, self.mask, blended, denoiser=self, sigma=sigma)
            self.p.scripts.on_mask_blend(self.p, mba)
            blended = mba.blended_latent
        return blended

    if self.mask_before_denoising and self.mask is not None:
        x = apply_blend(x, self.init_latent + sigma[:, None, None, None] * torch.randn_like(self.init_latent))

    params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)
    cfg_denoiser_callback(params)

    opts = shared.opts
    skip_uncond = False
    if self.p.is_hr_pass:
        cond_scale = self.p.hr_cfg
    s_min_uncond = getattr(opts, "s_min_uncond", 0.0)
    if s_min_uncond > 0 and sigma[0] < s_min_uncond and not is_edit_model:
        if self.step % 2 == 0 or opts.s_min_uncond_all:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = opts.s_min_uncond_all
    if not skip_uncond:
        if self.step < opts.skip_early_cond:
            skip_uncond = True
        elif opts.skip_early_cond != 0.0 and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond

    # As reForge: padded onto the local cond/uncond (a DictWithShape's crossattn in place).
    if opts.pad_cond_uncond_v0 and cond.shape[1] != uncond.shape[1]:
        cond, uncond = self.pad_cond_uncond_v0(cond, uncond)
    elif opts.pad_cond_uncond and cond.shape[1] != uncond.shape[1]:
        cond, uncond = self.pad_cond_uncond(cond, uncond)

    unet = self.inner_model.inner_model.forge_objects.unet
    model, control = unet.model, unet.controlnet_linked_list
    model_options = unet.model_options
    if kwargs.get("model_options", None):
        model_options = model_options.copy()
        model_options.update(kwargs["model_options"])
    seed = self.p.seeds[0]

    uncond_patched = forge_sampler.cond_from_a1111_to_patched_ldm(params.text_uncond)
    cond_patched = forge_sampler.cond_from_a1111_to_patched_ldm_weighted(params.text_cond, cond_composition)

    image_cond_in = unet.extra_concat_condition if unet.extra_concat_condition is not None else params.image_cond
    if isinstance(image_cond_in, torch.Tensor) and image_cond_in.shape[0] == x.shape[0] \
            and image_cond_in.shape[2:4] == x.shape[2:4]:
        for d in uncond_patched + cond_patched:
            d["model_conds"]["c_concat"] = CONDRegular(image_cond_in)
    if control is not None:
        for d in cond_patched + uncond_patched:
            d["control"] = control

    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, sigma, uncond_patched, cond_patched, cond_scale, model_options, seed = modifier(
            model, x, sigma, uncond_patched, cond_patched, cond_scale, model_options, seed)

    if skip_uncond:
        denoised = sampling_function(model, x, sigma, None, cond_patched, 1.0, model_options, seed)
    else:
        denoised = sampling_function(model, x, sigma, uncond_patched, cond_patched, cond_scale, model_options, seed)

    if self.need_last_noise_uncond:
        self.last_noise_uncond = torch.zeros_like(x) if skip_uncond else torch.clone(denoised[-uncond.shape[0]:])

    if is_edit_model:
        denoised = self.combine_denoised_for_edit_model(denoised, cond_scale * self.cond_scale_miltiplier)
    elif not skip_uncond:
        denoised = self.combine_denoised(denoised, cond_composition, uncond, cond_scale * self.cond_scale_miltiplier)

    if not self.mask_before_denoising and self.mask is not None:
        denoised = apply_blend(denoised)
    self.sampler.last_latent = denoised
    after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
    cfg_after_cfg_callback(after)
    denoised = after.x
    self.step += 1
    return denoised.to(device=original_device, dtype=original_dtype)


CFGDenoiser.combine_denoised = _combine_denoised  # noqa: F821
CFGDenoiser.forward = _forward  # noqa: F821
