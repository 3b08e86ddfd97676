"""When SEGA may widen the host's model call, and when its concept rows need a call of their own.

The fast path puts each concept's B rows between the host's cond and uncond rows
(`rows.py`). That is right for everything that treats rows one by one and reads the
result the way the WebUI does — the cond rows named in `conds_list` and the last B rows
as uncond (ControlNet, FreeU, Tiled Diffusion, Neutral Prompt's AND_SALT, ...). It is
wrong beside code that reads the call's rows by counting them:

- a CFG denoiser whose `combine_denoised` or `forward` is not the WebUI's own (Dynamic
  Thresholding takes every row before the last B as a prompt cond);
- attention layers hooked by another extension (Regional Prompter splits rows by its own
  batch arithmetic and changes branch when a call holds more cond rows than images).

There SEGA evaluates its concept rows in a model call of their own, made from the
`cfg_denoised` callback with only concept rows in it: the host's call — and with it the
other extension's result — stays exactly what it would be without SEGA. Nothing here
asks which extension is installed; it looks at what the sampling code really is.
"""

from __future__ import annotations

import sys
from pathlib import PurePath

# Where the WebUI defines its CFG denoisers (modules/sd_samplers_*.py).
HOST_MODULES = frozenset(
    {"modules.sd_samplers_cfg_denoiser", "modules.sd_samplers_kdiffusion", "modules.sd_samplers_timesteps"}
)
_CFG_METHODS = ("forward", "combine_denoised")


def widening_conflict(denoiser, model) -> str | None:
    """Why the concept rows must not go into the host's call, or None when they may."""
    for name in _CFG_METHODS:
        fn = _function(getattr(denoiser, name, None))
        if fn is not None and not _is_host_code(fn):
            return f"{owner(fn)} replaces the CFG denoiser's {name}"
    hooked = hooked_attention(model)
    if hooked is not None:
        return f"{hooked} hooks the model's attention layers"
    return None


def hooked_attention(model) -> str | None:
    """The owner of a replaced `forward` on one of the model's attention layers, if any."""
    root = getattr(getattr(model, "model", None), "diffusion_model", None)
    if root is None:
        root = model
    modules = getattr(root, "modules", None)
    if modules is None:
        return None
    for module in modules():
        if "attention" not in type(module).__name__.lower():
            continue
        fn = module.__dict__.get("forward")  # an instance attribute: somebody's hook
        if fn is not None:
            return owner(_function(fn))
    return None


def owner(fn) -> str:
    """A name users recognise for the code of `fn`: its extension folder when it lives
    in one (…/extensions/<name>/…), else its module."""
    code = getattr(fn, "__code__", None)
    if code is not None:
        parts = PurePath(code.co_filename).parts
        for i, part in enumerate(parts[:-1]):
            if part in ("extensions", "extensions-builtin"):
                return parts[i + 1]
    return str(getattr(fn, "__module__", None) or "another extension")


def _function(fn):
    """The plain function behind a bound method."""
    return getattr(fn, "__func__", fn)


def _is_host_code(fn) -> bool:
    # The file, not only __module__: a functools.wraps wrapper claims the wrapped one's module.
    module = getattr(fn, "__module__", None)
    code = getattr(fn, "__code__", None)
    if module not in HOST_MODULES or code is None:
        return False
    defined_in = getattr(sys.modules.get(module), "__file__", None)
    return defined_in is not None and PurePath(code.co_filename) == PurePath(defined_in)
