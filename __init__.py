"""ComfyUI's entry to this folder: ComfyUI imports only this file, as a package whose name is
the folder's path (comfy-contract.md §1); AUTOMATIC1111, Forge and reForge never import it
(they load scripts/). It registers the SEGA nodes and nothing else.

ComfyUI puts neither this folder nor custom_nodes/ on sys.path, and the host-free library
imports itself as `sega`: that one name is registered from this folder, once, and a `sega`
from somewhere else is a clear error rather than a silent mix. A problem reads as one line
in ComfyUI's log; the pack then offers no nodes and ComfyUI starts as usual."""

import importlib.util
import logging
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _register_library() -> None:
    own = _HERE / "sega"
    loaded = sys.modules.get("sega")
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", "") or "").resolve().parent
        if where != own:
            raise ImportError(f"another package named 'sega' is already loaded (from {where})")
        return
    spec = importlib.util.spec_from_file_location("sega", own / "__init__.py", submodule_search_locations=[str(own)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["sega"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("sega", None)
        raise


try:
    _register_library()
    from .sega_comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except Exception as e:  # noqa: BLE001 - ComfyUI must start; the log says why the pack is empty
    logging.getLogger("sd-webui-sega").error("[SEGA] the SEGA nodes could not be loaded (%s: %s)", type(e).__name__, e)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
