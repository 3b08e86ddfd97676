"""SEGA in the WebUI's CFG denoiser. The only module that imports the WebUI (`modules.*`).

Per generation, `begin_generation` puts a `SegaRun` on the processing object `p`; before
every sampling pass `begin_pass` encodes the concepts with the host's own conditioning
and hooks the pass's sampler. Three CFG callbacks, registered once, then act on each
model call of a `p` that carries a run:

- `cfg_denoiser`: adds B rows per needed concept between the cond and the uncond rows
  (or, where that layout is not safe, keeps them for a model call of their own);
- `cfg_denoised`: reads the concept and uncond outputs and asks the engine for the term;
- `cfg_after_cfg`: adds the term to the guided result in the space the model call returns
  (ε, or x0 of a diffusion or a flow model: sega/spaces.py), only where an inpainting mask
  repaints (`inpaint.py`).

A refiner switch mid-pass re-points the pass at the new checkpoint (`refiner.py`).

The callbacks of one model call run in order on one thread and carry no reference to
`p` after the first, so the first hands its `CallRecord` to the other two through
`_current`, which every call overwrites first thing.

Whatever goes wrong inside a callback stops SEGA for the rest of the pass, leaves the
host's tensors as they were and tells the user (comment and infotext), never only the
console: the host would swallow the exception (contract §1).
"""

from __future__ import annotations

import functools
import sys
import traceback
from dataclasses import dataclass, field

import torch
from modules import prompt_parser, script_callbacks, shared

from sega import spaces
from sega.args import SegaArgs
from sega.concepts import network_note
from sega.errors import SegaInputError
from sega.fields import FIELDS
from sega.guidance import SegaGuidance
from sega.masks import attention_grid
from sega_webui import (
    attention,
    compat,
    concept_rows,
    edit,
    forge,
    hosts,
    inpaint,
    mask_readers,
    models,
    patcher,
    refiner,
    reforge,
    rows,
)
from sega_webui.steps import StepClock, real_steps, sampler_family

try:  # timestep samplers (DDIM, PLMS, UniPC) return ε, k-diffusion ones x0
    from modules.sd_samplers_timesteps import CFGDenoiserTimesteps
except ImportError:  # pragma: no cover - WebUI without timestep samplers
    CFGDenoiserTimesteps = ()

RUN_ATTR = "sega_run"
# Infotext keys that say why SEGA did not act (the API's `info` carries them too, which
# is the only place an API client can read it: the response has no comment text).
OFF_KEY = "SEGA off"
STOPPED_KEY = "SEGA stopped"
_UNKNOWN = object()
# The hosts that sample through a UNet patcher: their sampling plumbing, behind one call.
_PATCHER_HOSTS = {hosts.FORGE: forge, hosts.REFORGE: reforge}


@dataclass
class SegaPass:
    """One sampling pass: the concepts' conds for this model and size, the sampler's
    step clock, and the guidance engine (built once the pass's step count is known).
    A refiner switch points it at the new model (refiner.py); the rest goes on."""

    UNKNOWN = _UNKNOWN
    args: SegaArgs
    model: object
    sampler: object
    schedules: list  # per concept, the host's ScheduledPromptConditioning list
    clock: StepClock
    guidance: SegaGuidance | None = None
    steps: int | None = None
    stopped: bool = False
    error: str | None = None
    low_vram: bool = False
    # Decided at the pass's first call with concept rows: whether they go in a model call
    # of their own (see `compat.widening_conflict`), and the token that the prompt's cond
    # rows carry in front of their chunks (ControlNet's mark), which concept rows copy.
    separate: bool | None = None
    attention_hooks: list = field(default_factory=list)  # set aside in the separate call
    lead: object = _UNKNOWN
    rows_cache: dict = field(default_factory=dict)
    edit: edit.EditPlan | None = None  # img2img "Edit the input image" (edit.py)
    inverting: bool = False  # the edit's inversion is calling the model: SEGA stays out
    hires: bool = False
    texts: list | None = None  # per concept, the text of each schedule entry (for the masks)
    masks: object | None = None  # the masks' reader (mask_readers.py), while a concept uses a mask
    masks_confirmed: bool = False  # the masks have read the model's layers once

    def __post_init__(self):
        self.checkpoint = models.checkpoint(self.model)
        self.set_schedules(self.schedules)

    def set_schedules(self, schedules) -> None:
        self.schedules = schedules
        # Longest token count of each concept over its schedule, for padding.
        self.tokens = tuple(max(rows.token_length_one(e.cond) for e in s) for s in schedules)

    def start(self, steps: int) -> None:
        self.steps = steps
        # An edit with no concepts only reconstructs the photo: there is nothing to guide.
        self.guidance = self.args.guidance(steps) if self.schedules else None

    def close(self) -> None:
        if self.masks is not None:
            self.masks.remove()


@dataclass
class SegaRun:
    args: SegaArgs
    infotext: dict = field(default_factory=dict)  # what this generation's images claim
    cond_cache: dict = field(default_factory=dict)
    current: SegaPass | None = None
    comments: set = field(default_factory=set)
    # Per batch (`begin_batch`): why SEGA could not act, and whether it changed anything.
    failure: str | None = None
    acted: bool = False
    script_args_range: tuple | None = None  # SEGA's own positions in p.script_args

    def comment(self, p, text: str) -> None:
        if text not in self.comments:
            self.comments.add(text)
            p.comment(text)

    def fail(self, p, pass_: SegaPass | None, reason: str, error: BaseException | None = None) -> None:
        """SEGA adds nothing more in this pass; the user reads why under the image and in
        the infotext (see `end_batch`), the console gets the traceback."""
        if error is not None:
            print(f"*** SEGA: {reason}", file=sys.stderr)
            traceback.print_exception(error, file=sys.stderr)
        if pass_ is not None:
            pass_.stopped = True
            pass_.close()
        if self.failure is None:
            self.failure = reason
        self.comment(p, _off_text("stopped" if self.acted else "off", reason))


@dataclass
class CallRecord:
    run: SegaRun
    p: object
    pass_: SegaPass
    step: int
    active: tuple[int, ...]
    cond_rows: int
    batch: int
    x: torch.Tensor  # the image rows the model saw, [B, C, H, W]
    sigma: torch.Tensor  # their sigmas (k-diffusion) or timesteps, [B]
    space: str  # what the model call returns (sega/spaces.py)
    term: torch.Tensor | None = None
    concept_rows: object = None  # separate mode: the concepts' conds, evaluated in cfg_denoised
    image_cond: torch.Tensor | None = None
    dict_conds: bool = False
    repaint: torch.Tensor | None = None  # inpainting: the host's repaint share (nmask)
    mask_columns: torch.Tensor | None = None  # the concepts' token columns, when a mask needs attention

    @property
    def eps_space(self) -> bool:
        return self.space == spaces.EPS


class _Current:
    record: CallRecord | None = None


_current = _Current()


# ---- generation, batch and pass set-up (called from the script's hooks) ------------------


# Every generation-parameter key SEGA writes. X/Y/Z copies `p` for each cell with the
# previous cell's parameters in it: whatever this cell does not write must not be claimed.
OWN_KEYS = frozenset({f.infotext for f in FIELDS if f.infotext} | {OFF_KEY, STOPPED_KEY, edit.OFF_KEY,
                                                                    patcher.UNGUIDED_KEY})


def begin_generation(p, args: SegaArgs | None, script_args_range: tuple | None = None) -> None:
    """Forget anything a copied `p` carried and start this generation's run (or none)."""
    _current.record = None
    # A new dict: a copied `p` may share its parameters with the one it was copied from.
    p.extra_generation_params = {k: v for k, v in p.extra_generation_params.items() if k not in OWN_KEYS}
    run = SegaRun(args, script_args_range=script_args_range) if args is not None and args.active else None
    setattr(p, RUN_ATTR, run)
    if run is None:
        return
    run.infotext = args.to_infotext()
    p.extra_generation_params.update(run.infotext)
    for i, concept in enumerate(args.concepts, start=1):
        if concept.networks:
            run.comment(p, f"SEGA concept {i}: {network_note(concept)}")


def decline(p, reason: str) -> None:
    """SEGA is off for this generation before it starts (e.g. invalid settings)."""
    begin_generation(p, None)
    p.comment(_off_text("off", reason))
    p.extra_generation_params[OFF_KEY] = reason


def _off_text(state: str, reason: str) -> str:
    # "SEGA off (concepts[2]): …" when the reason starts by naming a field, else "SEGA off: …".
    return f"SEGA {state}{' ' if reason.startswith('(') else ': '}{reason}"


def begin_batch(p) -> None:
    """Each batch's images claim SEGA's settings unless SEGA failed in that batch."""
    run = getattr(p, RUN_ATTR, None)
    if run is None:
        return
    run.failure, run.acted = None, False
    params = p.extra_generation_params
    params.pop(OFF_KEY, None)
    params.pop(STOPPED_KEY, None)
    params.pop(patcher.UNGUIDED_KEY, None)
    params.update(run.infotext)


def end_batch(p) -> None:
    """Before the batch's infotexts are written: if SEGA failed before it changed
    anything, the images must not claim its concepts (pasted back, they would make
    another image); if it stopped part-way, they say so."""
    run = getattr(p, RUN_ATTR, None)
    if run is not None and run.current is not None:
        run.current.close()
    if run is None or run.failure is None:
        return
    params = p.extra_generation_params
    if run.acted:
        params[STOPPED_KEY] = run.failure
        return
    for key in run.infotext:
        params.pop(key, None)
    params[OFF_KEY] = run.failure


def end_generation(p) -> None:
    _current.record = None
    run = getattr(p, RUN_ATTR, None)
    if run is not None and run.current is not None:
        run.current.close()
    setattr(p, RUN_ATTR, None)


def begin_pass(p) -> None:
    run = getattr(p, RUN_ATTR, None)
    if run is None:
        return
    if run.current is not None:
        run.current.close()
    run.current = None
    _current.record = None
    try:
        _begin_pass(p, run)
    except Exception as e:  # the host would swallow it; the user must still learn it
        run.current = None
        run.fail(p, None, f"it could not prepare the sampling pass ({type(e).__name__}: {e})", e)


def _begin_pass(p, run: SegaRun) -> None:
    model = shared.sd_model
    hires = bool(getattr(p, "is_hr_pass", False))
    if hires and not run.args.hires:
        return
    sampler = p.sampler
    reason = unsupported_reason(p, model)
    if hosts.CURRENT == hosts.A1111:  # the patcher hosts' samplers all hand SEGA x0, of SD3 too
        reason = reason or models.sampler_problem(model, getattr(sampler, "model_wrap_cfg", None))
    if reason:
        run.fail(p, None, reason)
        return
    try:
        schedules, texts = concept_conds(p, run, model, hires) if run.args.concepts else ([], None)
    except Exception as e:  # a bad embedding or prompt must not cost the image
        run.fail(p, None, f"the concepts could not be encoded ({type(e).__name__}: {e})", e)
        return
    config = getattr(sampler, "config", None)
    name = sampler_family(getattr(config, "name", "") or getattr(p, "sampler_name", ""), sampler)
    second_order = bool(getattr(config, "options", {}).get("second_order", False))
    pass_ = SegaPass(run.args, model, sampler, schedules, StepClock(name, second_order), hires=hires, texts=texts)
    pass_.low_vram = bool(getattr(shared.opts, "sega_low_vram", False))
    pass_.edit = edit.plan(p, run, sampler, hires)
    plumbing = _PATCHER_HOSTS.get(hosts.CURRENT)
    problem = plumbing.edit_problem() if plumbing is not None and pass_.edit is not None else None
    if problem:
        pass_.edit.decline(problem)
        pass_.edit = None
    if pass_.edit is not None:
        pass_.edit.calls = getattr(plumbing, "edit_calls", None)
    _hook_sampler(sampler, pass_, name)
    run.current = pass_
    if plumbing is not None:
        plumbing.install(p, run, pass_)


def unsupported_reason(p, model) -> str | None:
    if getattr(model, "cond_stage_key", None) == "edit" and getattr(p, "image_cfg_scale", None) not in (None, 1.0):
        return "edit models (InstructPix2Pix) use another row layout; set Image CFG Scale to 1 to use SEGA"
    inner = getattr(model, "model", None)
    if getattr(inner, "conditioning_key", None) == "crossattn-adm":
        return "unCLIP checkpoints are not supported"
    return None


def concept_conds(p, run: SegaRun, model, hires: bool) -> tuple[list, list | None]:
    """The concepts' cond schedules for this pass, made exactly as the host makes the
    prompt's (processing.get_conds_with_caching): the same function — whatever replaced
    it, e.g. Prompt Fusion — with the same positional arguments; and, when a concept uses
    a mask, the text of each schedule entry (where its words are)."""
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
    old_timelines = bool(getattr(shared.opts, "use_old_scheduling", False))
    key = (models.checkpoint(model), tuple(texts), width, height, steps, hires_steps, old_timelines)
    if key not in run.cond_cache:
        if len(run.cond_cache) >= 4:  # a base and a refiner, first pass and hires pass
            run.cond_cache.pop(next(iter(run.cond_cache)))
        batch = prompt_parser.SdConditioning(texts, width=width, height=height)
        run.cond_cache[key] = prompt_parser.get_learned_conditioning(model, batch, steps, hires_steps, old_timelines)
    schedule_texts = None
    if run.args.uses_masks:
        schedule_texts = [[text for _, text in entries] for entries in prompt_parser.get_learned_conditioning_prompt_schedules(
            texts, steps, hires_steps, old_timelines)]
    return run.cond_cache[key], schedule_texts


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
        except Exception as e:  # never cost the sampler its launch
            pass_.error = f"its step count could not be read ({type(e).__name__}: {e})"
        if pass_.edit is not None:
            return edit.launch(pass_.edit, pass_, launch, args, kwargs)
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
    if pass_ is None or pass_.stopped or pass_.inverting or not pass_.schedules:
        return
    if pass_.sampler is not getattr(denoiser, "sampler", None):
        return
    try:
        record, widened = _plan_call(params, run, pass_, p)
    except attention.MaskError as e:  # a model the masks cannot read: the reason is the message
        run.fail(p, pass_, str(e))
        return
    except Exception as e:
        run.fail(p, pass_, f"an error while adding its rows to the model call ({type(e).__name__}: {e})", e)
        return
    if widened is not None:  # all built before any is handed back
        params.x, params.sigma, params.image_cond, params.text_cond = widened
    _current.record = record


def _plan_call(params, run: SegaRun, pass_: SegaPass, p):
    """This call's record (None: SEGA leaves the call alone) and, on the widened path,
    the host's x, sigma, image_cond and text_cond with the concept rows added."""
    denoiser = params.denoiser
    if pass_.masks is not None:
        pass_.masks.disarm()  # a call that died before its read-back left it armed
    if pass_.error:
        run.fail(p, pass_, pass_.error)
        return None, None
    if models.checkpoint(shared.sd_model) != pass_.checkpoint and not refiner.follow_switch(
        p, run, pass_, denoiser, shared.sd_model, concept_conds, unsupported_reason):
        return None, None
    if pass_.guidance is None:
        pass_.start(getattr(denoiser, "steps", None) or p.steps)
    batch = params.text_uncond.shape[0]
    if _host_skips_uncond(denoiser, params.sigma[-batch:]):
        return None, None  # no unconditional estimate this call: nothing to steer against
    step = pass_.clock.step_for_call(denoiser.step)
    if pass_.guidance.is_idle(step):
        return None, None  # nothing SEGA could add: the host's plain step, untouched
    cond_rows = params.x.shape[0] - batch
    if cond_rows != rows.row_count(params.text_cond):
        run.fail(p, pass_, "another extension changed the rows of the model call before SEGA could add its own")
        return None, None
    active = pass_.guidance.rows_needed(step)
    space = models.output_space(shared.sd_model, denoiser, CFGDenoiserTimesteps)
    record = CallRecord(run, p, pass_, step, active, cond_rows, batch, params.x[-batch:], params.sigma[-batch:], space)
    record.repaint = inpaint.repaint_share(denoiser)
    if not active:
        return record, None
    if pass_.lead is _UNKNOWN:
        pass_.lead = rows.lead_token(params.text_cond, concept_rows.chunk_length())
    if pass_.separate is None:
        conflict = compat.widening_conflict(denoiser, shared.sd_model, ours=(on_cfg_denoised,))
        pass_.separate = pass_.low_vram or conflict is not None
        if pass_.separate:
            pass_.attention_hooks = compat.hooked_attention(shared.sd_model)
    # Until the masks have read the UNet's layers once, the concepts go in a call of their
    # own: should the model have none on the grid, SEGA stops and the host's rows were
    # computed exactly as without it (a wider batch may round differently).
    probe = False
    if pass_.guidance.needs_attention(step):
        probe = not pass_.masks_confirmed
        mask_readers.prepare_call(pass_, record, denoiser.step, concept_rows.schedule_index,
                                  arm=not (pass_.separate or probe))
    if pass_.separate or probe:
        record.image_cond = params.image_cond[-batch:]
        # Padded like on the widened path, so that both paths make the same image.
        length = _concept_length(pass_, active, params.text_cond)
        record.concept_rows = concept_rows.build(pass_, active, batch, denoiser.step, params.text_cond, length)
        record.dict_conds = isinstance(params.text_cond, dict)
        return record, None
    return record, _with_concept_rows(params, pass_, active, batch, denoiser.step)


def _concept_length(pass_: SegaPass, active, text_cond) -> int:
    """Tokens of one row of the widened call: the prompt's or the longest active concept's."""
    lead = 0 if pass_.lead is None else 1
    return max(rows.token_length(text_cond), max(pass_.tokens[i] for i in active) + lead)


def _with_concept_rows(params, pass_: SegaPass, active, batch: int, call: int):
    """x, sigma, image_cond and text_cond with B rows per active concept, all built before
    any is handed back, so a failure leaves the host's tensors as they were."""
    make_dict = concept_rows.dict_maker(params.text_cond)
    text = params.text_cond
    length = _concept_length(pass_, active, text)
    concept = concept_rows.build(pass_, active, batch, call, text, length)
    if rows.token_length(text) < length:
        text = rows.pad_tokens(text, length, concept_rows.empty_chunk(), make_dict)
    return (
        rows.insert_before_last(params.x, batch, len(active)),
        rows.insert_before_last(params.sigma, batch, len(active)),
        rows.insert_before_last(params.image_cond, batch, len(active)),
        rows.cat_conds(text, concept, make_dict),
    )


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
    try:
        _read_back(params, record)
    except attention.MaskError as e:
        _current.record = None
        record.run.fail(record.p, record.pass_, str(e))
    except Exception as e:
        _current.record = None
        record.run.fail(
            record.p, record.pass_, f"an error while reading the model call ({type(e).__name__}: {e})", e
        )


def _read_back(params, record: CallRecord) -> None:
    x_out = params.x
    b, k, r = record.batch, len(record.active), record.cond_rows
    separate = record.concept_rows is not None
    expected = r + (0 if separate else k * b) + b
    if x_out.shape[0] != expected:
        _current.record = None
        record.run.fail(
            record.p, record.pass_,
            f"another extension changed the rows of the model call ({x_out.shape[0]} instead of {expected})",
        )
        return
    uncond = x_out[-b:]
    masks = record.pass_.masks
    grid = masks.grid(*x_out.shape[-2:]) if masks is not None else attention_grid(*x_out.shape[-2:])
    if separate:
        if record.mask_columns is not None:
            record.pass_.masks.arm(0, k * b, grid, record.mask_columns)
        concepts = compat.evaluate_separately(record, params.inner_model, x_out).reshape(k, b, *x_out.shape[1:])
    else:
        concepts = x_out[r : r + k * b].reshape(k, b, *x_out.shape[1:]) if k else None
    maps = early = None
    if record.mask_columns is not None:
        maps = record.pass_.masks.collect(grid).view(k, b, *grid)
        record.pass_.masks_confirmed = True
        early = attention.early_rows(record.sigma, record.eps_space, getattr(record.pass_.model, "alphas_cumprod", None),
                                     flow=record.space == spaces.FLOW)
    uncond, concepts = spaces.noise_estimates(record.space, record.x, record.sigma, uncond, concepts)
    record.term = record.pass_.guidance.step(
        record.step, uncond, concepts, inpaint.region(record.repaint, uncond), attention=maps, early=early)


def on_cfg_after_cfg(params) -> None:
    record, _current.record = _current.record, None
    if record is None or record.term is None:
        return
    try:
        term = inpaint.restrict(record.term, record.repaint).to(params.x.dtype)
        guided = spaces.add_term(record.space, params.x, term, record.sigma)
    except Exception as e:
        record.run.fail(record.p, record.pass_, f"an error while adding its term ({type(e).__name__}: {e})", e)
        return
    params.x = guided
    record.run.acted = True


def register_callbacks() -> None:
    if hosts.CURRENT in _PATCHER_HOSTS:
        return  # no on_cfg_denoised there: SEGA joins through the UNet patcher (forge.py, reforge.py)
    # No name= keyword: WebUIs before 1.8 do not take it.
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
    script_callbacks.on_cfg_denoised(on_cfg_denoised)
    script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg)
