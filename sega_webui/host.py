"""SEGA in the WebUI's CFG denoiser. The only module that imports the WebUI (`modules.*`).

Per generation, `begin_generation` puts a `SegaRun` on the processing object `p`; before
every sampling pass `begin_pass` encodes the concepts with the host's own conditioning
and hooks the pass's sampler. Three CFG callbacks, registered once, then act on each
model call of a `p` that carries a run:

- `cfg_denoiser`: adds B rows per needed concept between the cond and the uncond rows;
- `cfg_denoised`: reads the concept and uncond outputs and asks the engine for the term;
- `cfg_after_cfg`: adds the term to the guided result (in ε, or as −σ·γ on x0), only where
  an inpainting mask repaints (`inpaint.py`).

The callbacks of one model call run in order on one thread and carry no reference to
`p` after the first, so the first hands its `CallRecord` to the other two through
`_current`, which every call overwrites first thing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from modules import prompt_parser, script_callbacks, shared

from sega.args import SegaArgs
from sega.errors import SegaInputError
from sega.guidance import SegaGuidance
from sega_webui import inpaint, rows
from sega_webui.steps import StepClock, real_steps

try:  # timestep samplers (DDIM, PLMS, UniPC) return ε, k-diffusion ones x0
    from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
except ImportError:  # pragma: no cover - WebUI without timestep samplers
    CFGDenoiserTimesteps = ()

RUN_ATTR = "sega_run"


@dataclass
class SegaPass:
    """One sampling pass: the concepts' conds for this model and size, the sampler's
    step clock, and the guidance engine (built once the pass's step count is known)."""

    args: SegaArgs
    model: object
    sampler: object
    schedules: list  # per concept, the host's ScheduledPromptConditioning list
    clock: StepClock
    guidance: SegaGuidance | None = None
    steps: int | None = None
    stopped: bool = False
    error: str | None = None
    separate_calls: bool = False
    rows_cache: dict = field(default_factory=dict)

    def __post_init__(self):
        # Longest token count of each concept over its schedule, for padding.
        self.tokens = tuple(max(rows.token_length_one(e.cond) for e in s) for s in self.schedules)

    def start(self, steps: int) -> None:
        self.steps = steps
        self.guidance = self.args.guidance(steps)


@dataclass
class SegaRun:
    args: SegaArgs
    cond_cache: dict = field(default_factory=dict)
    current: SegaPass | None = None
    comments: set = field(default_factory=set)

    def comment(self, p, text: str) -> None:
        if text not in self.comments:
            self.comments.add(text)
            p.comment(text)


@dataclass
class CallRecord:
    pass_: SegaPass
    step: int
    active: tuple[int, ...]
    cond_rows: int
    batch: int
    x: torch.Tensor  # the image rows the model saw, [B, C, H, W]
    sigma: torch.Tensor  # their sigmas (k-diffusion) or timesteps, [B]
    eps_space: bool
    term: torch.Tensor | None = None
    concept_rows: object = None  # low-VRAM mode: the concepts' conds, evaluated separately
    image_cond: torch.Tensor | None = None
    dict_conds: bool = False
    repaint: torch.Tensor | None = None  # inpainting: the host's repaint share (nmask)


class _Current:
    record: CallRecord | None = None


_current = _Current()


# ---- generation and pass set-up (called from the script's hooks) --------------------------


def begin_generation(p, args: SegaArgs | None) -> None:
    """Forget anything a copied `p` carried and start this generation's run (or none)."""
    _current.record = None
    setattr(p, RUN_ATTR, SegaRun(args) if args is not None and args.active else None)


def end_generation(p) -> None:
    _current.record = None
    setattr(p, RUN_ATTR, None)


def begin_pass(p) -> None:
    run = getattr(p, RUN_ATTR, None)
    if run is None:
        return
    run.current = None
    _current.record = None
    model = shared.sd_model
    hires = bool(getattr(p, "is_hr_pass", False))
    if hires and not run.args.hires:
        return
    reason = unsupported_reason(p, model)
    if reason:
        run.comment(p, f"SEGA off: {reason}")
        return
    sampler = p.sampler
    try:
        schedules = concept_conds(p, run, model, hires)
    except Exception as e:  # a bad embedding or prompt must not cost the image
        run.comment(p, f"SEGA off: the concepts could not be encoded ({e})")
        return
    config = getattr(sampler, "config", None)
    name = getattr(config, "name", "") or getattr(p, "sampler_name", "")
    second_order = bool(getattr(config, "options", {}).get("second_order", False))
    pass_ = SegaPass(run.args, model, sampler, schedules, StepClock(name, second_order))
    pass_.separate_calls = bool(getattr(shared.opts, "sega_low_vram", False))
    _hook_sampler(sampler, pass_, name)
    run.current = pass_


def unsupported_reason(p, model) -> str | None:
    if getattr(model, "cond_stage_key", None) == "edit" and getattr(p, "image_cfg_scale", None) not in (None, 1.0):
        return "edit models (InstructPix2Pix) use another row layout; set Image CFG Scale to 1 to use SEGA"
    inner = getattr(model, "model", None)
    if getattr(inner, "conditioning_key", None) == "crossattn-adm":
        return "unCLIP checkpoints are not supported"
    return None


def concept_conds(p, run: SegaRun, model, hires: bool) -> list:
    """The concepts' cond schedules for this pass, made like the host makes the prompt's."""
    texts = [c.text for c in run.args.concepts]
    steps = getattr(p, "firstpass_steps", None) or p.steps
    hires_steps = None
    if hires:
        width, height = p.hr_upscale_to_x, p.hr_upscale_to_y
        hr_steps = getattr(p, "hr_second_pass_steps", 0) or p.steps
        config = getattr(p.sampler, "config", None)
        hires_steps = config.total_steps(hr_steps) if config is not None else hr_steps
    else:
        width, height = p.width, p.height
    key = (id(model), tuple(texts), width, height, steps, hires_steps)
    if key not in run.cond_cache:
        run.cond_cache.clear()  # one pass kind at a time is enough; drop other models' conds
        batch = prompt_parser.SdConditioning(texts, width=width, height=height)
        run.cond_cache[key] = prompt_parser.get_learned_conditioning(model, batch, steps, hires_steps)
    return run.cond_cache[key]


def _hook_sampler(sampler, pass_: SegaPass, name: str) -> None:
    """Learn the pass's real step count when it launches, and its completed steps."""
    # img2img keeps one sampler for every batch of a generation: wrap the originals each
    # time, not the previous batch's wrappers.
    if not hasattr(sampler, "_sega_unhooked"):
        sampler._sega_unhooked = (sampler.func, sampler.callback_state)
    launch, completed = sampler._sega_unhooked

    # wraps() keeps the signature visible: the host inspects it to pick the arguments.
    @functools.wraps(launch)
    def func(*args, **kwargs):
        fallback = getattr(getattr(sampler, "model_wrap_cfg", None), "steps", None) or 0
        try:
            pass_.start(real_steps(name, kwargs, fallback))
        except SegaInputError as e:  # e.g. a cooldown that lands before its warm-up here
            pass_.error = f"({e.field}): {e.problem}"
        return launch(*args, **kwargs)

    def callback_state(d):
        pass_.clock.on_step_callback(d.get("i", 0))
        return completed(d)

    sampler.func = func
    sampler.callback_state = callback_state


# ---- the three CFG callbacks ---------------------------------------------------------------


def on_cfg_denoiser(params) -> None:
    _current.record = None
    denoiser = params.denoiser
    p = getattr(denoiser, "p", None)
    run = getattr(p, RUN_ATTR, None)
    pass_ = run.current if run is not None else None
    if pass_ is None or pass_.stopped or pass_.sampler is not getattr(denoiser, "sampler", None):
        return
    if pass_.error:
        pass_.stopped = True
        run.comment(p, f"SEGA off {pass_.error}")
        return
    if shared.sd_model is not pass_.model:
        pass_.stopped = True
        run.comment(p, "SEGA stopped at the refiner switch: its concepts were encoded for the first model")
        return
    if pass_.guidance is None:
        pass_.start(getattr(denoiser, "steps", None) or p.steps)
    batch = params.text_uncond.shape[0]
    if _host_skips_uncond(denoiser, params.sigma[-batch:]):
        return  # no unconditional estimate this call: nothing to steer against
    step = pass_.clock.step_for_call(denoiser.step)
    if pass_.guidance.is_idle(step):
        return  # nothing SEGA could add: the host's plain step, untouched
    active = pass_.guidance.rows_needed(step)
    eps_space = isinstance(denoiser, CFGDenoiserTimesteps) if CFGDenoiserTimesteps else False
    record = CallRecord(
        pass_, step, active, params.x.shape[0] - batch, batch, params.x[-batch:], params.sigma[-batch:], eps_space
    )
    record.repaint = inpaint.repaint_share(denoiser)
    if active and pass_.separate_calls:
        # Low-VRAM: the concepts get their own model calls in cfg_denoised.
        record.image_cond = params.image_cond[-batch:]
        record.concept_rows = _concept_rows(pass_, active, batch, denoiser.step, params.text_cond, None)
        record.dict_conds = isinstance(params.text_cond, dict)
    elif active:
        new = _with_concept_rows(params, pass_, active, batch, denoiser.step)
        params.x, params.sigma, params.image_cond, params.text_cond = new
    _current.record = record


def _concept_rows(pass_: SegaPass, active, batch: int, call: int, like, length: int | None):
    """The active concepts' conds, B rows each (concept-major), on the device and in the
    dtype of `like`, padded to `length` tokens when given. Cached per schedule phase, so a
    step normally reuses them instead of rebuilding and copying them to the device."""
    phase = tuple(_schedule_index(schedule, call) for schedule in pass_.schedules)
    key = (phase, active, batch, length, _cond_signature(like))
    cached = pass_.rows_cache.get(key)
    if cached is None:
        make_dict = _dict_maker(like)
        concept = prompt_parser.reconstruct_cond_batch(pass_.schedules, call)
        concept = rows.select_rows(concept, torch.tensor(active, dtype=torch.long), batch, make_dict)
        if length is not None and rows.token_length(concept) < length:
            concept = rows.pad_tokens(concept, length, _empty_chunk(), make_dict)
        cached = _to_device(concept, like, make_dict)
        if len(pass_.rows_cache) > 64:
            pass_.rows_cache.clear()
        pass_.rows_cache[key] = cached
    return cached


def _schedule_index(schedule, call: int) -> int:
    # The host's rule (prompt_parser.reconstruct_cond_batch): first entry not ended yet.
    for i, entry in enumerate(schedule):
        if call <= entry.end_at_step:
            return i
    return 0


def _cond_signature(cond):
    t = cond["crossattn"] if isinstance(cond, dict) else cond
    return (type(cond), t.dtype, t.device)


def _empty_chunk():
    empty = getattr(shared.sd_model, "cond_stage_model_empty_prompt", None)
    if empty is None:
        raise RuntimeError("the WebUI gives no empty-prompt chunk to pad concept conds with")
    return empty


def _with_concept_rows(params, pass_: SegaPass, active, batch: int, call: int):
    """x, sigma, image_cond and text_cond with B rows per active concept, all built before
    any is handed back, so a failure leaves the host's tensors as they were."""
    make_dict = _dict_maker(params.text_cond)
    text = params.text_cond
    longest = max(pass_.tokens[i] for i in active)
    length = max(rows.token_length(text), longest)
    concept = _concept_rows(pass_, active, batch, call, text, length)
    if rows.token_length(text) < length:
        text = rows.pad_tokens(text, length, _empty_chunk(), make_dict)
    return (
        rows.insert_before_last(params.x, batch, len(active)),
        rows.insert_before_last(params.sigma, batch, len(active)),
        rows.insert_before_last(params.image_cond, batch, len(active)),
        rows.cat_conds(text, concept, make_dict),
    )


def _evaluate_separately(record, inner_model, out_like):
    """Low-VRAM: each concept's B rows in a model call of their own."""
    b = record.batch
    outs = []
    for j in range(len(record.active)):
        cond = rows.slice_rows(record.concept_rows, j * b, (j + 1) * b)
        if record.dict_conds:
            condition = {**cond, "c_concat": [record.image_cond]}
        else:
            condition = {"c_crossattn": [cond], "c_concat": [record.image_cond]}
        outs.append(inner_model(record.x, record.sigma, cond=condition))
    return torch.cat(outs).to(out_like.dtype)


def _to_device(cond, like, make_dict):
    if isinstance(cond, dict):
        return make_dict({k: v.to(like[k].device) for k, v in cond.items()})
    return cond.to(like.device)


def _dict_maker(text_cond):
    if isinstance(text_cond, dict):
        shape_type = type(text_cond)
        return lambda d: shape_type(d, d["crossattn"].shape) if shape_type is not dict else d
    return dict


def _host_skips_uncond(denoiser, sigma) -> bool:
    """Whether the host will drop the uncond rows of this call (contract §4, step 3)."""
    opts = shared.opts
    early = getattr(opts, "skip_early_cond", 0.0) or 0.0
    if early != 0 and denoiser.step / denoiser.total_steps <= early:
        return True
    s_min = getattr(denoiser.sampler, "s_min_uncond", 0.0) or 0.0
    if s_min > 0 and (denoiser.step % 2 or getattr(opts, "s_min_uncond_all", False)):
        return bool(sigma[0] < s_min)  # the host syncs on this comparison as well
    return False


def on_cfg_denoised(params) -> None:
    record = _current.record
    if record is None:
        return
    x_out = params.x
    b, k, r = record.batch, len(record.active), record.cond_rows
    separate = record.concept_rows is not None
    if x_out.shape[0] != r + (0 if separate else k * b) + b:
        _current.record = None  # another extension changed the rows; leave this call alone
        return
    uncond = x_out[-b:]
    if separate:
        concepts = _evaluate_separately(record, params.inner_model, x_out).reshape(k, b, *x_out.shape[1:])
    else:
        concepts = x_out[r : r + k * b].reshape(k, b, *x_out.shape[1:]) if k else None
    if not record.eps_space:
        sigma = record.sigma.to(x_out.dtype).view(b, *([1] * (x_out.dim() - 1)))
        uncond = (record.x - uncond) / sigma
        if concepts is not None:
            concepts = (record.x.unsqueeze(0) - concepts) / sigma
    record.term = record.pass_.guidance.step(record.step, uncond, concepts, inpaint.region(record.repaint, uncond))


def on_cfg_after_cfg(params) -> None:
    record, _current.record = _current.record, None
    if record is None or record.term is None:
        return
    term = inpaint.restrict(record.term, record.repaint).to(params.x.dtype)
    if record.eps_space:
        params.x = params.x + term
    else:
        sigma = record.sigma.to(params.x.dtype).view(-1, *([1] * (params.x.dim() - 1)))
        params.x = params.x - sigma * term


def register_callbacks() -> None:
    # No name= keyword: WebUIs before 1.8 do not take it.
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
    script_callbacks.on_cfg_denoised(on_cfg_denoised)
    script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg)
