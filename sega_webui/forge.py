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

Implicit masks read the concepts' attention in that same call through an observe-only
`attn2_patch` (attention.PatchedAttention) added to the call's own model options only; on
a Flux-shaped model, which has no cross-attention, through forward hooks on its
double-stream blocks' q/k norms that are on for that call only (joint_attention.py).

At CFG scale 1 the patch turns Forge's shortcut off (`disable_cfg1_optimization`), so those
steps are guided too. Its inpainting blend comes after the post-CFG functions, so the term
reaches only what the mask repaints without being weighted here; the engine still takes its
thresholds over the repainted region only.
"""

from __future__ import annotations

import functools

import torch

from sega import spaces
from sega_webui import patcher

# Models Forge loads besides the WebUI's own families that are not flow models either.
NOT_LEGACY = ("SEGA works on SD 1.x, SD 2.x, SDXL, SD3 and flow-matching (Flux-shaped) checkpoints in Forge; "
              "this checkpoint is neither")


def unsupported_reason(engine, args) -> str | None:
    """Flux and the other flow models Forge adds are guided as SD3 is, in flow space (the
    concepts and the negative prompt under the prompt's own distilled-guidance embedding);
    anything else beyond the WebUI's families is off."""
    legacy = getattr(engine, "is_webui_legacy_model", None)
    if callable(legacy) and not legacy() and _output_space(engine.forge_objects.unet) != spaces.FLOW:
        return NOT_LEGACY
    return None


def edit_problem() -> str | None:
    """Forge's vendored k-diffusion samplers make k-diffusion's updates: the inversion
    retraces them."""
    return None


def install(p, run, pass_) -> None:
    """Put SEGA's patches on a clone of the pass's UNet patcher (called from
    `process_before_every_sampling`, after the pass is set up). Forge's hires fix calls that
    hook twice, resetting the patcher in between: each call patches the patcher it finds."""
    engine = p.sd_model
    reason = unsupported_reason(engine, run.args) or patcher.mask_problem(run.args, engine.forge_objects.unet.model,
                                                                           joint=ForgePatch.JOINT)
    if reason:
        run.fail(p, pass_, reason)
        return
    pass_.lead = None  # Forge's ControlNet marks no token in front of the prompt's chunks
    _supply_uncond(p)
    objects = engine.forge_objects
    unet = objects.unet.clone()
    patch = ForgePatch(run, p, pass_, _output_space(unet))
    unet.set_model_sampler_pre_cfg_function(patch.pre_cfg)
    unet.set_model_sampler_post_cfg_function(patch.post_cfg, disable_cfg1_optimization=patcher.guides_cfg_1(p))
    # The two calls run one after the other: only what the concepts' call needs beyond a
    # plain step's 2B rows counts.
    extra = patcher.extra_memory(unet, p, len(pass_.schedules), 2)
    if extra > 0:
        unet.add_extra_preserved_memory_during_sampling(extra)
    objects.unet = unet


def negative_conds(p):
    """The negative prompt's conds for this pass where Forge encoded none: at CFG scale 1
    its `setup_conds` sets `p.uc = None`, and `calculate_hr_conds` `p.hr_uc = None` at Hires
    CFG Scale 1 (Flux dev always runs so), and then no uncond reaches the sampler at all —
    nothing for SEGA to steer against, whatever the CFG-1 shortcut does. Encoded here as
    Forge would have (same texts, size, distilled guidance and step schedule); None where
    Forge has them."""
    from modules import prompt_parser, sd_samplers, shared

    hires = bool(getattr(p, "is_hr_pass", False))
    if getattr(p, "hr_uc" if hires else "uc", None) is not None:
        return None
    if hires:
        negatives = getattr(p, "hr_negative_prompts", None) or p.negative_prompts
        size, distilled = (p.hr_upscale_to_x, p.hr_upscale_to_y), getattr(p, "hr_distilled_cfg", None)
        config = sd_samplers.find_sampler_config(getattr(p, "hr_sampler_name", None) or p.sampler_name)
        steps = p.hr_second_pass_steps or p.steps
        hires_steps = config.total_steps(steps) if config else steps
    else:
        negatives, size = p.negative_prompts, (p.width, p.height)
        distilled, hires_steps = getattr(p, "distilled_cfg_scale", None), None
    texts = prompt_parser.SdConditioning(negatives, width=size[0], height=size[1], is_negative_prompt=True)
    if distilled is not None:
        texts.distilled_cfg_scale = distilled
    return prompt_parser.get_learned_conditioning(shared.sd_model, texts, p.firstpass_steps, hires_steps,
                                                  shared.opts.use_old_scheduling)


def _supply_uncond(p) -> None:
    """Hand the pass's sampler the negative prompt's conds where Forge skipped them, as its
    `sample` would have (`extra_args["uncond"]`), around the launch SEGA's pass set-up just
    hooked (host.py re-hooks from the sampler's own function every pass)."""
    uc = negative_conds(p)
    sampler = getattr(p, "sampler", None)
    if uc is None or sampler is None:
        return
    launch = sampler.func

    @functools.wraps(launch)  # the host reads the launch's signature
    def func(*args, **kwargs):
        extra = kwargs.get("extra_args")
        if isinstance(extra, dict) and extra.get("uncond") is None:
            extra["uncond"] = uc
        return launch(*args, **kwargs)

    sampler.func = func


def _output_space(unet) -> str:
    predictor = getattr(unet.model, "predictor", None)
    return spaces.FLOW if getattr(predictor, "prediction_type", None) == "const" else spaces.DENOISED


class ForgePatch(patcher.Patch):
    """SEGA's pre- and post-CFG functions for one sampling pass."""

    JOINT = True  # the concepts have a call of their own, which a Flux model's hooks can watch alone

    def __init__(self, run, p, pass_, space: str):
        super().__init__(run, p, pass_, space)
        self.has_uncond = False  # set by pre_cfg for the step that is being computed

    def pre_cfg(self, model, cond, uncond, x, timestep, model_options):
        self.has_uncond = uncond is not None
        return model, cond, uncond, x, timestep, model_options

    def post_cfg(self, args):
        denoised = args["denoised"]
        has_uncond, self.has_uncond = self.has_uncond, False
        if self.idle():
            return denoised
        if not has_uncond:
            self.note_unguided()
            return denoised
        return self.guided(denoised, lambda: self._term(args), args["sigma"])

    def _term(self, args) -> torch.Tensor | None:
        plan = self.plan()
        if plan is None:
            return None
        denoiser, step, active = plan
        x, sigma, model = args["input"], args["sigma"], args["model"]
        masks = self.masks(model, active, step, denoiser.step, x)
        try:
            concepts = self._concepts(args, active, denoiser.step, masks) if active else None
            return self.term(step, denoiser, x, sigma, args["uncond_denoised"], concepts, masks, len(active),
                             getattr(model.predictor, "alphas_cumprod", None))
        finally:
            if masks is not None:  # a Flux model's hooks never outlive SEGA's own call
                masks.disarm()

    def _concepts(self, args, active, call: int, masks) -> torch.Tensor:
        """The active concepts' x0 predictions [K, B, …], from one model call of K·B rows
        (watched by the masks' attention patch when a concept uses a mask)."""
        from backend.sampling.condition import compile_conditions
        from backend.sampling.sampling_function import calc_cond_uncond_batch

        x, sigma = args["input"], args["sigma"]
        k, b = len(active), x.shape[0]
        compiled = compile_conditions(self.concept_conds(active, b, call, x))[0]
        prompt = args["cond"][0]
        # The prompt's dict with the concepts' text: its c_concat, control and area stay, and
        # so does Flux's distilled guidance, the embedding the prompt was evaluated under.
        concept = {key: value for key, value in prompt.items() if key != "strength"}
        concept.update({key: value for key, value in compiled.items() if key != "model_conds"})
        text = {key: value for key, value in compiled["model_conds"].items()
                if key != "guidance" or "guidance" not in prompt["model_conds"]}
        concept["model_conds"] = {**prompt["model_conds"], **text}
        options = args["model_options"] if masks is None else masks.options(args["model_options"])
        out, _ = calc_cond_uncond_batch(args["model"], [concept], None, x.repeat(k, *([1] * (x.dim() - 1))),
                                        sigma.repeat(k), options)
        return out.view(k, b, *x.shape[1:])
