"""The WebUI side of the implicit masks' reading (the readers themselves are host-free:
sega/attention.py): the WebUI's hypernetworks, which change what `to_k` sees, and the
concepts' token columns of a pass, cached on it."""

from __future__ import annotations

import torch

from sega.attention import (  # noqa: F401 - the readers, as the WebUI family has always named them here
    CHUNK,
    EARLY_TIMESTEP,
    HOOK_MARK,
    ConceptAttention,
    MaskError,
    PatchedAttention,
    _Call,
    attention_layers,
    concept_attention,
    early_rows,
    find_tokenizer,
    ldm_attention_layers,
    remove_stale_hooks,
    token_columns,
    token_positions,
)


def hypernetwork_keys():
    """The WebUI's hypernetworks change the context that `to_k` sees; the same change here,
    or None when none is loaded (or outside the WebUI)."""
    try:
        from modules import shared
        from modules.hypernetworks import hypernetwork
    except ImportError:
        return None
    loaded = getattr(shared, "loaded_hypernetworks", None)
    if not loaded:
        return None
    return lambda context: hypernetwork.apply_hypernetworks(loaded, context)[0]


def concept_columns(pass_, model, active, batch: int, call: int, schedule_index, device, tokenizer=None) -> torch.Tensor:
    """The active concepts' token columns for this call [K·B, L], cached on the pass
    (`tokenizer`: the one whose tokens the attention's context holds, if not the model's
    `find_tokenizer`)."""
    phase = tuple(schedule_index(s, call) if len(t) == len(s) else None for s, t in zip(
        pass_.schedules, pass_.texts, strict=True))
    key = ("columns", phase, tuple(active), batch, device)
    if key not in pass_.rows_cache:
        pass_.rows_cache[key] = token_columns(
            tokenizer or find_tokenizer(model), pass_.texts, phase, active, batch, max(pass_.tokens), device)
    return pass_.rows_cache[key]
