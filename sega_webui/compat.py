"""When SEGA may widen the host's model call, and when its concept rows need a call of their own.

The fast path puts each concept's B rows between the host's cond and uncond rows
(`rows.py`). That is right for everything that treats rows one by one and reads the
result the way the WebUI does — the cond rows named in `conds_list` and the last B rows
as uncond (ControlNet, FreeU, Tiled Diffusion, Neutral Prompt's AND_SALT, ...). It is
wrong beside code that reads the call's rows by counting them:

- a CFG denoiser whose `combine_denoised` or `forward` is not the WebUI's own (Dynamic
  Thresholding takes every row before the last B as a prompt cond);
- attention layers hooked by another extension (Regional Prompter splits rows by its own
  batch arithmetic and changes branch when a call holds more cond rows than images);
- a model call replaced by another extension (Tiled Diffusion's `forward` on the
  denoiser's inner model or `apply_model` on the model: its region prompts assume 2B rows);
- another extension's `cfg_denoised` callback: it is handed the call's output rows, and
  counts them (Regional Prompter's latent mode blends them per region).

There SEGA evaluates its concept rows in a model call of their own, made from the
`cfg_denoised` callback with only concept rows in it: the host's call — and with it the
other extension's result — stays exactly what it would be without SEGA. In that call
the hooked attention layers are set aside (`plain_attention`): their hooks are written
for the host's rows and would, e.g., cut a concept's context into the prompt's regions.
Nothing here asks which extension is installed; it looks at what the sampling code
really is.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import partial
from pathlib import PurePath

import torch

from sega_webui import rows

# Where the WebUI defines its CFG denoisers (modules/sd_samplers_*.py).
HOST_MODULES = frozenset(
    {"modules.sd_samplers_cfg_denoiser", "modules.sd_samplers_kdiffusion", "modules.sd_samplers_timesteps"}
)
_CFG_METHODS = ("forward", "combine_denoised")


def widening_conflict(denoiser, model, ours=()) -> str | None:
    """Why the concept rows must not go into the host's call, or None when they may.
    `ours`: SEGA's own callbacks, which do not count."""
    for name in _CFG_METHODS:
        fn = _function(getattr(denoiser, name, None))
        if fn is not None and not _is_host_code(fn):
            return f"{owner(fn)} replaces the CFG denoiser's {name}"
    layers = hooked_attention(model)
    if layers:
        return f"{owner(_function(vars(layers[0])['forward']))} hooks the model's attention layers"
    for holder, name in ((getattr(denoiser, "inner_model", None), "forward"), (model, "apply_model")):
        fn = vars(holder).get(name) if hasattr(holder, "__dict__") else None
        if fn is not None:
            return f"{owner(_function(fn))} replaces the model call ({name})"
    for script, callback in callbacks("cfg_denoised"):
        folder = extension_folder(script)
        if folder is not None and callback not in ours:
            return f"{folder} reads the model call's output rows (cfg_denoised)"
    return None


def hooked_attention(model) -> list:
    """The model's attention layers whose `forward` another extension replaced on the
    instance (the WebUI's own optimisations replace it on the class)."""
    root = getattr(getattr(model, "model", None), "diffusion_model", None)
    if root is None:
        root = model
    modules = getattr(root, "modules", None)
    if modules is None:
        return []
    return [
        m for m in modules() if "attention" in type(m).__name__.lower() and "forward" in vars(m)
    ]


@contextmanager
def plain_attention(layers):
    """The attention layers' own `forward` for the duration of the block; the hooks are
    put back whatever happens inside."""
    saved = [(m, vars(m).pop("forward")) for m in layers if "forward" in vars(m)]
    try:
        yield
    finally:
        for m, fn in saved:
            m.forward = fn


def callbacks(category: str) -> list[tuple[str | None, object]]:
    """(registering script's file, callback) in the order the host runs them."""
    from modules import script_callbacks

    ordered = getattr(script_callbacks, "ordered_callbacks", None)
    if ordered is None:  # pragma: no cover - WebUI before 1.8
        found = getattr(script_callbacks, "callback_map", {}).get("callbacks_" + category, [])
    else:
        found = ordered(category)
    return [(getattr(c, "script", None), getattr(c, "callback", None)) for c in found]


def extension_folder(path) -> str | None:
    """<name> of a path inside …/extensions/<name>/, else None."""
    if not path:
        return None
    parts = PurePath(str(path)).parts
    for i, part in enumerate(parts[:-1]):
        if part in ("extensions", "extensions-builtin"):
            return parts[i + 1]
    return None


def owner(fn) -> str:
    """A name users recognise for the code of `fn`: its extension folder when it lives
    in one (…/extensions/<name>/…), else its module."""
    code = getattr(fn, "__code__", None)
    folder = extension_folder(code.co_filename) if code is not None else None
    return folder or str(getattr(fn, "__module__", None) or "another extension")


def _function(fn):
    """The plain function behind a bound method or a functools.partial."""
    while isinstance(fn, partial):
        fn = fn.func
    return getattr(fn, "__func__", fn)


def _is_host_code(fn) -> bool:
    # The file, not only __module__: a functools.wraps wrapper claims the wrapped one's module.
    module = getattr(fn, "__module__", None)
    code = getattr(fn, "__code__", None)
    if module not in HOST_MODULES or code is None:
        return False
    defined_in = getattr(sys.modules.get(module), "__file__", None)
    return defined_in is not None and PurePath(code.co_filename) == PurePath(defined_in)


def evaluate_separately(record, inner_model, out_like):
    """The concepts' rows in model calls of their own: all concepts in one call, or (low
    VRAM) one concept per call, so that no call holds more rows than the host's."""
    b, k = record.batch, len(record.active)
    per_call = 1 if record.pass_.low_vram else k
    outs = []
    with plain_attention(record.pass_.attention_hooks):
        for start in range(0, k, per_call):
            n = min(per_call, k - start)
            cond = rows.slice_rows(record.concept_rows, start * b, (start + n) * b)
            image_cond = rows.repeat_rows(record.image_cond, n)
            if record.dict_conds:
                condition = {**cond, "c_concat": [image_cond]}
            else:
                condition = {"c_crossattn": [cond], "c_concat": [image_cond]}
            x, sigma = rows.repeat_rows(record.x, n), rows.repeat_rows(record.sigma, n)
            outs.append(inner_model(x, sigma, cond=condition))
    return torch.cat(outs).to(out_like.dtype)
