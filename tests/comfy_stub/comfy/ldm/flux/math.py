"""comfy/ldm/flux/math.py: `attention(q, k, v, pe, mask, transformer_options)` applies RoPE with
this module's `apply_rope`, then the attention; `rope`, `apply_rope`. Black Forest Labs'
functions, as the Forge stand-in writes them (tests/forge_stub/backend/nn/flux.py, loaded
here under a private name). As in ComfyUI, the blocks' module (layers.py) imports
`attention` from here and has no `apply_rope` of its own."""

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[4] / "forge_stub" / "backend" / "nn" / "flux.py"
_spec = importlib.util.spec_from_file_location("comfy.ldm.flux._bfl", _path)
bfl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bfl)

apply_rope, rope = bfl.apply_rope, bfl.rope


def attention(q, k, v, pe, mask=None, transformer_options={}):  # noqa: B006 - ComfyUI's signature
    return bfl.attention(q, k, v, pe)
