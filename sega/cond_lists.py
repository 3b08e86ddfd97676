"""The concepts' rows inside a ComfyUI-style batched model call, for the two hosts that share
that API under two names: ComfyUI (`comfy.samplers.calc_cond_batch`) and reForge (its older
copy, `ldm_patched.modules.samplers`). Host-free: the host's executor and dicts come in.

`calc_cond_batch(model, conds, x, timestep, model_options)` takes a list of cond lists (each
a list of cond dicts) and returns one x0 prediction per list, packing the lists into as few
model calls as memory allows. A `CALC_COND_BATCH` wrapper appends one list per concept and
hands the host back only the outputs it asked for.
"""

from __future__ import annotations

import torch

from sega import spaces


def output_space(model_sampling) -> str:
    """What the hooks see: x0 of a flow model (the `CONST` sampling mixin: SD3, Flux, …) or
    of a model with x = x0 + σ·ε (ε, v and EDM models alike)."""
    flow = any(c.__name__ == "CONST" for c in type(model_sampling).__mro__)
    return spaces.FLOW if flow else spaces.DENOISED


def concept_cond(prompt: dict, compiled: dict) -> dict:
    """The prompt's cond dict with a concept's text conditioning: the image conditioning of an
    inpainting model (`c_concat`), ControlNet's `control`, areas, timestep ranges and Flux's
    guidance stay the prompt's, so the concept's prediction differs from the prompt's by the
    text alone."""
    concept = {key: value for key, value in prompt.items() if key not in ("strength", "uuid")}
    concept.update({key: value for key, value in compiled.items() if key != "model_conds"})
    concept["model_conds"] = {**prompt.get("model_conds", {}), **compiled.get("model_conds", {})}
    return concept


# What ComfyUI's and reForge's model management raise from inside a model call when the user
# cancels (`throw_exception_if_processing_interrupted`): it must stop the run, not SEGA.
CANCELLED = ("InterruptProcessingException",)


def is_cancel(error: BaseException) -> bool:
    return any(cls.__name__ in CANCELLED for cls in type(error).__mro__)


def call_with_lists(executor, model, conds, x, timestep, options, lists, plain_options, on_error):
    """The host's batched call with `lists` appended: (the outputs the host asked for, the
    added lists' outputs stacked [len(lists), …]). If the wider call fails (out of memory,
    say), `on_error(exception)` learns why and the host's own call is made as it would have
    been: (its outputs, None). A cancel is the user's, and goes on up."""
    try:
        out = executor(model, [*conds, *lists], x, timestep, options)
    except Exception as e:
        if is_cancel(e):
            raise
        on_error(e)
        return executor(model, conds, x, timestep, plain_options), None
    return out[: len(conds)], torch.stack(list(out[len(conds):]))
