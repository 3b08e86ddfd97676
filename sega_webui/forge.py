"""SEGA in Forge's sampling loop (stable-diffusion-webui-forge 2.x; forge-contract.md §1).

Forge's CFG denoiser hands each step to `backend.sampling.sampling_function`, which
evaluates the prompt's and the negative prompt's condition dicts in one batched model call
and never fires `on_cfg_denoised`, so the A1111 path (added rows, callbacks) cannot act
there. Instead, before every sampling pass, SEGA patches a clone of the pass's UNet patcher
(`p.sd_model.forge_objects.unet`, which Forge resets before each pass, so nothing has to be
undone):

- a pre-CFG function notes whether this step computes the unconditional prediction at all
  (Forge drops it at CFG scale 1, and with its skip-early-CFG and NGMS options);
- a post-CFG function evaluates the concepts that act at this step in ONE extra batched model
  call of K·B rows — a copy of the prompt's condition dict with the concepts' text, so the
  image conditioning of inpainting models (`c_concat`), ControlNet's `control` and every
  patch in `model_options` carry over — and adds SEGA's term to Forge's guided result.

Forge's model calls return x0 for every sampler (its DDIM, PLMS and UniPC run through the
same function with real sigmas), of a diffusion model (x = x0 + σ·ε) or of a flow model
(SD3: x = (1 − σ)·x0 + σ·ε); sega/spaces.py maps the term onto either. The engine, its
thresholds, warm-up, momentum and maps are the ones the A1111 path uses, step for step.

At CFG scale 1 the patch turns Forge's shortcut off (`disable_cfg1_optimization`), so those
steps are guided too. Its inpainting blend comes after the post-CFG functions, so the term
reaches only what the mask repaints without being weighted here; the engine still takes its
thresholds over the repainted region only.
"""

from __future__ import annotations

import math

import torch

from sega import spaces
from sega_webui import concept_rows, inpaint

# Flux, Chroma and the other models Forge loads besides the WebUI's own families.
NOT_LEGACY = ("SEGA works on SD 1.x, SD 2.x, SDXL and SD3 checkpoints in Forge; this checkpoint "
              "(Flux or another model Forge adds) is not supported yet")
NO_MASKS = "implicit masks are not available in Forge yet; clear the concepts' mask setting to use SEGA"


def unsupported_reason(engine, args) -> str | None:
    legacy = getattr(engine, "is_webui_legacy_model", None)
    if callable(legacy) and not legacy():
        return NOT_LEGACY
    if args.uses_masks:
        return NO_MASKS
    return None


def install(p, run, pass_) -> None:
    """Put SEGA's patches on a clone of the pass's UNet patcher (called from
    `process_before_every_sampling`, after the pass is set up). Forge's hires fix calls that
    hook twice, resetting the patcher in between: each call patches the patcher it finds."""
    engine = p.sd_model
    reason = unsupported_reason(engine, run.args)
    if reason:
        run.fail(p, pass_, reason)
        return
    pass_.lead = None  # Forge's ControlNet marks no token in front of the prompt's chunks
    objects = engine.forge_objects
    unet = objects.unet.clone()
    patch = ForgePatch(run, p, pass_, _output_space(unet))
    unet.set_model_sampler_pre_cfg_function(patch.pre_cfg)
    unet.set_model_sampler_post_cfg_function(patch.post_cfg,
                                           disable_cfg1_optimization=math.isclose(_cfg_scale(p), 1.0))
    extra = _extra_memory(unet, p, len(pass_.schedules))
    if extra > 0:
        unet.add_extra_preserved_memory_during_sampling(extra)
    objects.unet = unet


def _cfg_scale(p) -> float:
    if getattr(p, "is_hr_pass", False) and getattr(p, "hr_cfg", None) is not None:
        return float(p.hr_cfg)
    return float(p.cfg_scale)


def _output_space(unet) -> str:
    predictor = getattr(unet.model, "predictor", None)
    return spaces.FLOW if getattr(predictor, "prediction_type", None) == "const" else spaces.DENOISED


def _latent_shape(p, channels: int) -> list[int]:
    hires = getattr(p, "is_hr_pass", False)
    width = p.hr_upscale_to_x if hires else p.width
    height = p.hr_upscale_to_y if hires else p.height
    return [channels, height // 8, width // 8]


def _extra_memory(unet, p, concepts: int) -> int:
    """What the concepts' call needs beyond what Forge already keeps free for a plain step
    (2B rows): the two calls run one after the other, so only the excess counts."""
    if concepts == 0:
        return 0
    b = int(p.batch_size)
    channels = int(getattr(p.sd_model, "latent_channels", 4) or 4)
    shape = _latent_shape(p, channels)
    try:
        return max(0, int(unet.memory_required([concepts * b, *shape])) - int(unet.memory_required([2 * b, *shape])))
    except Exception:  # a patcher without an estimate: Forge's own reserve stays as it is
        return 0


class ForgePatch:
    """SEGA's pre- and post-CFG functions for one sampling pass."""

    def __init__(self, run, p, pass_, space: str):
        self.run, self.p, self.pass_, self.space = run, p, pass_, space
        self.has_uncond = False  # set by pre_cfg for the step that is being computed

    def __deepcopy__(self, memo):
        # Every clone of a UNet patcher deep-copies its model_options, and with them the
        # objects our bound methods hang on: a later clone (Forge's hires hook, another
        # extension's patch) must call THIS pass's functions, not a copy of the run and of
        # `p` (which also holds locks that cannot be copied).
        return self

    def pre_cfg(self, model, cond, uncond, x, timestep, model_options):
        self.has_uncond = uncond is not None
        return model, cond, uncond, x, timestep, model_options

    def post_cfg(self, args):
        denoised = args["denoised"]
        has_uncond, self.has_uncond = self.has_uncond, False
        pass_ = self.pass_
        if pass_.stopped or pass_.inverting or not pass_.schedules or not has_uncond:
            return denoised
        try:
            term = self._term(args)
            if term is None:
                return denoised
            guided = spaces.add_term(self.space, denoised, term.to(denoised.dtype), args["sigma"])
        except Exception as e:  # Forge would stop the generation; SEGA stops instead
            self.run.fail(self.p, pass_, f"an error while adding its term ({type(e).__name__}: {e})", e)
            return denoised
        self.run.acted = True
        return guided

    def _term(self, args) -> torch.Tensor | None:
        pass_, p = self.pass_, self.p
        if pass_.error:
            self.run.fail(p, pass_, pass_.error)
            return None
        denoiser = p.sampler.model_wrap_cfg
        if pass_.guidance is None:
            pass_.start(getattr(denoiser, "steps", None) or p.steps)
        step = pass_.clock.step_for_call(denoiser.step)
        if pass_.guidance.is_idle(step):
            return None
        active = pass_.guidance.rows_needed(step)
        x, sigma = args["input"], args["sigma"]
        concepts = self._concepts(args, active, denoiser.step) if active else None
        uncond, concepts = spaces.noise_estimates(self.space, x, sigma, args["uncond_denoised"], concepts)
        return pass_.guidance.step(step, uncond, concepts, inpaint.region(inpaint.repaint_share(denoiser), uncond))

    def _concepts(self, args, active, call: int) -> torch.Tensor:
        """The active concepts' x0 predictions [K, B, …], from one model call of K·B rows."""
        from backend.sampling.condition import compile_conditions
        from backend.sampling.sampling_function import calc_cond_uncond_batch

        x, sigma = args["input"], args["sigma"]
        k, b = len(active), x.shape[0]
        like = x if not isinstance(self.pass_.schedules[0][0].cond, dict) else {
            key: x for key in self.pass_.schedules[0][0].cond}
        cond = concept_rows.build(self.pass_, active, b, call, like, None)
        compiled = compile_conditions(cond)[0]
        prompt = args["cond"][0]
        # The prompt's dict with the concepts' text: its c_concat, control and area stay.
        concept = {key: value for key, value in prompt.items() if key != "strength"}
        concept.update({key: value for key, value in compiled.items() if key != "model_conds"})
        concept["model_conds"] = {**prompt["model_conds"], **compiled["model_conds"]}
        out, _ = calc_cond_uncond_batch(args["model"], [concept], None, x.repeat(k, *([1] * (x.dim() - 1))),
                                        sigma.repeat(k), args["model_options"])
        return out.view(k, b, *x.shape[1:])
