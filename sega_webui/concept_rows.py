"""The concepts' conds as rows of a model call: the active concepts' schedule entries for
this call, B rows each (concept-major), on the prompt rows' device, in their dict type (SDXL),
cached per schedule phase. Shared by every host's sampling plumbing (host.py on A1111,
forge.py on Forge)."""

from __future__ import annotations

import torch
from modules import prompt_parser, shared

from sega_webui import rows


def build(pass_, active, batch: int, call: int, like, length: int | None):
    """The active concepts' conds, B rows each (concept-major), on the device and in the
    dtype of `like`, behind the prompt rows' lead token if they carry one, padded to
    `length` tokens when given. Cached per schedule phase, so a step normally reuses them
    instead of rebuilding and copying them to the device."""
    phase = tuple(schedule_index(schedule, call) for schedule in pass_.schedules)
    key = (phase, active, batch, length, _cond_signature(like))
    cached = pass_.rows_cache.get(key)
    if cached is None:
        make_dict = dict_maker(like)
        concept = prompt_parser.reconstruct_cond_batch(pass_.schedules, call)
        concept = rows.select_rows(concept, torch.tensor(active, dtype=torch.long), batch, make_dict)
        concept = to_device(concept, like, make_dict)
        if pass_.lead is not None:
            concept = rows.prepend_token(concept, pass_.lead, make_dict)
        if length is not None and rows.token_length(concept) < length:
            concept = rows.pad_tokens(concept, length, empty_chunk(), make_dict)
        cached = concept
        if len(pass_.rows_cache) > 64:
            pass_.rows_cache.clear()
        pass_.rows_cache[key] = cached
    return cached


def schedule_index(schedule, call: int) -> int:
    # The host's rule (prompt_parser.reconstruct_cond_batch): first entry not ended yet.
    for i, entry in enumerate(schedule):
        if call <= entry.end_at_step:
            return i
    return 0


def _cond_signature(cond):
    t = cond["crossattn"] if isinstance(cond, dict) else cond
    return (type(cond), t.dtype, t.device)


def empty_chunk():
    empty = getattr(shared.sd_model, "cond_stage_model_empty_prompt", None)
    if empty is None:
        raise RuntimeError("the WebUI gives no empty-prompt chunk to pad concept conds with")
    return empty


def chunk_length() -> int:
    empty = getattr(shared.sd_model, "cond_stage_model_empty_prompt", None)
    return int(empty.shape[1]) if empty is not None else 77


def to_device(cond, like, make_dict):
    if isinstance(cond, dict):
        return make_dict({k: v.to(like[k].device) for k, v in cond.items()})
    return cond.to(like.device)


def dict_maker(text_cond):
    if isinstance(text_cond, dict):
        shape_type = type(text_cond)
        return lambda d: shape_type(d, d["crossattn"].shape) if shape_type is not dict else d
    return dict
