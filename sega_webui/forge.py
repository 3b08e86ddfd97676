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

At CFG scale 1 (Flux dev always runs so) Forge computes no negative-prompt prediction and
does not even encode the negative prompt. SEGA encodes it and evaluates it in its own call,
as B more rows behind the concepts' K·B: Forge's step stays its own B-row call, so a step
where no concept acts, and every step of a photo's inversion, costs what it costs without
SEGA and gives the same prediction bit for bit.

Forge's inpainting blend comes after the post-CFG functions, so the term reaches only what
the mask repaints without being weighted here; the engine still takes its thresholds over
the repainted region only. Its blend into the model's input (the kept region noised afresh
at every call) is taken out of a photo edit's calls (`edit_calls`): the inversion could not
be retraced through it.
"""

from __future__ import annotations

import contextlib

import torch

from sega import spaces
from sega_webui import concept_rows, patcher
from sega_webui.rows import cat_conds

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


@contextlib.contextmanager
def edit_calls(denoiser):
    """The CFG denoiser's calls of a photo edit (the inversion's and the sampling pass's),
    with the inpainting mask's kept region given to the model as the sampler carries it.

    Forge's CFG denoiser, unlike A1111's, overwrites the kept region of every call's input with
    the photo noised afresh (`noise_scaling(σ, randn_like(init_latent), init_latent)`): a new
    draw at each call, so the inversion and the sampling pass feed the model different inputs
    there, the model's estimates in the repainted region differ through its receptive field,
    and the noises the inversion solved for no longer land on the photo. In an edit the
    sampler's own latents in the kept region are already the photo noised to each σ (the
    inversion's trajectory, which the guided estimate, blended to the photo there, keeps it
    on), so the model is given those: the same input in both passes, as on A1111. Forge's
    draw is still made, so the global RNG advances as it would."""
    if getattr(denoiser, "mask", None) is None:
        yield
        return
    inner = denoiser.forward
    own = denoiser.__dict__.get("forward")  # another extension's wrapper, if any, stays inside

    def forward(x, sigma, *args, **kwargs):
        predictor = denoiser.inner_model.inner_model.forge_objects.unet.model.predictor
        with _blend_keeps(predictor, denoiser, x):
            return inner(x, sigma, *args, **kwargs)

    denoiser.forward = forward
    try:
        yield
    finally:
        if own is not None:
            denoiser.forward = own
        else:
            del denoiser.forward


@contextlib.contextmanager
def _blend_keeps(predictor, denoiser, x):
    """For one denoiser call: Forge's input blend (its first `noise_scaling` of the init
    latent in the call) takes `x` itself, so the blend leaves the input as the sampler made
    it; every other `noise_scaling` is Forge's."""
    real = predictor.noise_scaling
    own = predictor.__dict__.get("noise_scaling")
    pending = [True]

    def noise_scaling(sigma, noise, latent_image, *args, **kwargs):
        if pending and latent_image is denoiser.init_latent and noise.shape == x.shape:
            pending.clear()
            return x
        return real(sigma, noise, latent_image, *args, **kwargs)

    predictor.noise_scaling = noise_scaling
    try:
        yield
    finally:
        if own is not None:
            predictor.noise_scaling = own
        else:
            del predictor.noise_scaling


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
    negatives = negative_conds(p) if patcher.guides_cfg_1(p) else None
    objects = engine.forge_objects
    unet = objects.unet.clone()
    patch = ForgePatch(run, p, pass_, _output_space(unet), negatives)
    unet.set_model_sampler_pre_cfg_function(patch.pre_cfg)
    unet.set_model_sampler_post_cfg_function(patch.post_cfg)
    # The two calls run one after the other: only what SEGA's call needs beyond the 2B rows
    # Forge keeps free for a step counts.
    extra = patcher.extra_memory(unet, p, len(pass_.schedules) + (negatives is not None), 2)
    if extra > 0:
        unet.add_extra_preserved_memory_during_sampling(extra)
    objects.unet = unet


def negative_conds(p):
    """The negative prompt's conds (one schedule per image) for this pass. At CFG scale 1
    Forge's `setup_conds` sets `p.uc = None`, and `calculate_hr_conds` `p.hr_uc = None` at
    Hires CFG Scale 1 (Flux dev always runs so): then SEGA encodes them as Forge would have
    (same texts, size, distilled guidance and step schedule)."""
    from modules import prompt_parser, sd_samplers, shared

    hires = bool(getattr(p, "is_hr_pass", False))
    own = getattr(p, "hr_uc" if hires else "uc", None)
    if own is not None:
        return own
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


def _output_space(unet) -> str:
    predictor = getattr(unet.model, "predictor", None)
    return spaces.FLOW if getattr(predictor, "prediction_type", None) == "const" else spaces.DENOISED


class ForgePatch(patcher.Patch):
    """SEGA's pre- and post-CFG functions for one sampling pass (`negatives`: the negative
    prompt's conds where Forge computes no prediction for it, at CFG scale 1)."""

    JOINT = True  # the concepts have a call of their own, which a Flux model's hooks can watch alone

    def __init__(self, run, p, pass_, space: str, negatives=None):
        super().__init__(run, p, pass_, space)
        self.negatives = negatives
        self._last_join = None  # (concept rows, negative rows, joined): see _joined
        self.has_uncond = False  # set by pre_cfg for the step that is being computed

    def pre_cfg(self, model, cond, uncond, x, timestep, model_options):
        self.has_uncond = uncond is not None
        return model, cond, uncond, x, timestep, model_options

    def post_cfg(self, args):
        denoised = args["denoised"]
        has_uncond, self.has_uncond = self.has_uncond, False
        if self.idle():
            return denoised
        if not has_uncond and self.negatives is None:
            self.note_unguided()
            return denoised
        return self.guided(denoised, lambda: self._term(args, own_uncond=not has_uncond), args["sigma"])

    def _term(self, args, own_uncond: bool) -> torch.Tensor | None:
        plan = self.plan()
        if plan is None:
            return None
        denoiser, step, active = plan
        x, sigma, model = args["input"], args["sigma"], args["model"]
        masks = self.masks(model, active, step, denoiser.step, x)
        try:
            if active:
                concepts, uncond = self._predictions(args, active, denoiser.step, masks, own_uncond)
            else:  # momentum alone: no direction is taken this step, the uncond gives the shape only
                concepts, uncond = None, args["uncond_denoised"] if not own_uncond else args["cond_denoised"]
            return self.term(step, denoiser, x, sigma, uncond, concepts, masks, len(active),
                             getattr(model.predictor, "alphas_cumprod", None))
        finally:
            if masks is not None:  # a Flux model's hooks never outlive SEGA's own call
                masks.disarm()

    def _predictions(self, args, active, call: int, masks, own_uncond: bool):
        """(the active concepts' x0 predictions [K, B, …], the negative prompt's [B, …]) from
        one model call of K·B rows (watched by the masks' attention patch when a concept uses
        a mask) — with the negative prompt's B rows behind them where Forge computed none."""
        x = args["input"]
        k, b = len(active), x.shape[0]
        text = self.concept_conds(active, b, call, x)
        negative = self._negative_rows(call, text) if own_uncond else None
        joined = None if negative is None else self._joined(text, negative)
        rows = k + (joined is not None)
        options = args["model_options"] if masks is None else masks.options(args["model_options"])
        out = self._call(args, text if joined is None else joined, rows, options)
        if not own_uncond:
            return out[:k], args["uncond_denoised"]
        if joined is not None:
            return out[:k], out[k]
        # Token counts that differ (a negative prompt longer than the concepts): its own call,
        # not padded, so its prediction is the one Forge would make.
        return out, self._call(args, negative, 1, args["model_options"])[0]

    def _negative_rows(self, call: int, like):
        """The negative prompt's conds at this call's schedule step, B rows, on `like`'s
        device and in its dict type."""
        from modules import prompt_parser

        phase = tuple(concept_rows.schedule_index(schedule, call) for schedule in self.negatives)
        cached = self.pass_.rows_cache.get(("negative", phase))
        if cached is None:
            conds = prompt_parser.reconstruct_cond_batch(self.negatives, call)
            cached = concept_rows.to_device(conds, like, concept_rows.dict_maker(like))
            self.pass_.rows_cache[("negative", phase)] = cached
        return cached

    def _joined(self, text, negative):
        """The concepts' rows with the negative prompt's behind them, where every part has the
        same shape past the rows (the same token count); None where not. Both inputs come from
        the per-phase caches, so the join is made once per phase, not every step."""
        last = self._last_join
        if last is not None and last[0] is text and last[1] is negative:
            return last[2]
        if isinstance(text, dict):
            fits = set(text) == set(negative) and all(text[key].shape[1:] == negative[key].shape[1:] for key in text)
        else:
            fits = text.shape[1:] == negative.shape[1:]
        joined = cat_conds(text, negative, concept_rows.dict_maker(text)) if fits else None
        self._last_join = (text, negative, joined)
        return joined

    def _call(self, args, text, rows: int, options) -> torch.Tensor:
        """The x0 predictions [rows, B, …] of the conds `text` (rows·B rows, row-group major)
        on the step's latent, in one call through Forge's own batching."""
        from backend.sampling.condition import compile_conditions
        from backend.sampling.sampling_function import calc_cond_uncond_batch

        x, sigma = args["input"], args["sigma"]
        compiled = compile_conditions(text)[0]
        prompt = args["cond"][0]
        # The prompt's dict with this text: its c_concat, control and area stay, and so does
        # Flux's distilled guidance, the embedding the prompt was evaluated under.
        cond = {key: value for key, value in prompt.items() if key != "strength"}
        cond.update({key: value for key, value in compiled.items() if key != "model_conds"})
        conds = {key: value for key, value in compiled["model_conds"].items()
                 if key != "guidance" or "guidance" not in prompt["model_conds"]}
        cond["model_conds"] = {**prompt["model_conds"], **conds}
        out, _ = calc_cond_uncond_batch(args["model"], [cond], None, x.repeat(rows, *([1] * (x.dim() - 1))),
                                        sigma.repeat(rows), options)
        return out.view(rows, x.shape[0], *x.shape[1:])

