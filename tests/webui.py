"""Loads the WebUI stand-in (tests/webui_stub) and our script into it, and runs txt2img."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "webui_stub"


def _load_k_diffusion() -> None:
    """The real k-diffusion sampling code, without its package __init__ (which pulls in
    training and evaluation dependencies the WebUI never uses)."""
    if "k_diffusion.sampling" in sys.modules:
        return
    root = importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    sys.modules["k_diffusion"] = pkg
    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        # Only k_diffusion.utils' image helpers use torchvision; stub it for that one import
        # and take the stub away again, so other packages do not mistake it for the real one.
        names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
        tv, tr, fn = (types.ModuleType(n) for n in names)
        tv.transforms, tr.functional = tr, fn
        stubs = dict(zip(names, (tv, tr, fn), strict=True))
        sys.modules.update(stubs)
    try:
        import k_diffusion.external  # noqa: F401
        import k_diffusion.sampling  # noqa: F401
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def load():
    """(modules namespace, SegaScript class, host module)."""
    _load_k_diffusion()
    if str(STUB) not in sys.path:
        sys.path.insert(0, str(STUB))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if "sega_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sega_script", ROOT / "scripts" / "sega.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sega_script"] = module
        spec.loader.exec_module(module)
    from modules import processing, script_callbacks, scripts, shared

    import sega_webui.host as host
    import sega_webui.registration as registration

    return types.SimpleNamespace(
        registration=registration,
        processing=processing,
        shared=shared,
        scripts=scripts,
        script_callbacks=script_callbacks,
        script_module=sys.modules["sega_script"],
        host=host,
    )
