"""Adding concept rows to the host's model call and reading them back. Plain torch.

Row layout of one CFG call (WebUI 1.10): [R cond rows | B uncond rows]. We make it
[R cond rows | K·B concept rows (concept-major) | B uncond rows], so that everything the
host does with "the last B rows" (skip-uncond, combine_denoised) still finds the uncond.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


def token_length(cond) -> int:
    """Tokens of a batch of conds [R, T, D] (or an SDXL dict of them)."""
    return (cond["crossattn"] if isinstance(cond, Mapping) else cond).shape[1]


def token_length_one(cond) -> int:
    """Tokens of one cond [T, D] (or an SDXL dict), as a schedule entry holds it."""
    return (cond["crossattn"] if isinstance(cond, Mapping) else cond).shape[0]


def pad_tokens(cond, length: int, empty: torch.Tensor, make_dict: Callable):
    """Lengthen the token axis to `length` with copies of the empty-prompt chunk [1, 77, D]
    (the WebUI pads this way too), leaving `cond` itself untouched."""
    if isinstance(cond, Mapping):
        out = dict(cond)
        out["crossattn"] = pad_tokens(cond["crossattn"], length, empty, make_dict)
        return make_dict(out)
    missing = length - cond.shape[1]
    if missing <= 0:
        return cond
    chunk = empty.shape[1]
    if missing % chunk:
        raise ValueError(f"cannot pad {cond.shape[1]} tokens to {length} with {chunk}-token chunks")
    filler = empty.to(device=cond.device, dtype=cond.dtype).repeat(cond.shape[0], missing // chunk, 1)
    return torch.cat([cond, filler], dim=1)


def select_rows(cond, index: torch.Tensor, repeats: int, make_dict: Callable):
    """Rows `index` of `cond`, each repeated `repeats` times in a row (one per image)."""
    if isinstance(cond, Mapping):
        return make_dict({k: select_rows(v, index, repeats, make_dict) for k, v in cond.items()})
    return cond.index_select(0, index.to(cond.device)).repeat_interleave(repeats, dim=0)


def slice_rows(cond, start: int, stop: int):
    """Rows start:stop of a cond (tensor or SDXL dict; a dict comes back as a plain dict,
    which is what the model's condition dict wants)."""
    if isinstance(cond, Mapping):
        return {k: v[start:stop] for k, v in cond.items()}
    return cond[start:stop]


def cat_conds(first, second, make_dict: Callable):
    if isinstance(first, Mapping):
        return make_dict({k: torch.cat([first[k], second[k].to(first[k].dtype)]) for k in first})
    return torch.cat([first, second.to(first.dtype)])


def insert_before_last(t: torch.Tensor, batch: int, copies: int) -> torch.Tensor:
    """[rows… | last B] → [rows… | `copies` × last B | last B]."""
    last = t[-batch:]
    return torch.cat([t[:-batch], last.repeat(copies, *([1] * (t.dim() - 1))), last])


def row_count(cond) -> int:
    return (cond["crossattn"] if isinstance(cond, Mapping) else cond).shape[0]


def repeat_rows(t: torch.Tensor, copies: int) -> torch.Tensor:
    """[B, …] → [copies·B, …], copy-major (the order concept rows are kept in)."""
    return t if copies == 1 else t.repeat(copies, *([1] * (t.dim() - 1)))


def lead_token(cond, chunk: int):
    """The token the first cond row carries in front of its `chunk`-token chunks, [1, 1, D],
    or None. The WebUI's conds are whole chunks; ControlNet puts one mark token in front
    of every prompt (positive) and negative-prompt (negative) cond, and treats a call as
    unmarked unless every row has one — so concept rows must carry the prompt rows' mark."""
    t = cond["crossattn"] if isinstance(cond, Mapping) else cond
    if t.shape[1] % chunk != 1:
        return None
    return t[:1, :1].clone()


def prepend_token(cond, token: torch.Tensor, make_dict: Callable):
    """`token` [1, 1, D] in front of every row's tokens."""
    if isinstance(cond, Mapping):
        out = dict(cond)
        out["crossattn"] = prepend_token(cond["crossattn"], token, make_dict)
        return make_dict(out)
    lead = token.to(device=cond.device, dtype=cond.dtype).expand(cond.shape[0], 1, cond.shape[2])
    return torch.cat([lead, cond], dim=1)
