"""Loads the Forge stand-in (tests/forge_stub over tests/webui_stub) and our script into it.

Both stand-ins name their packages `modules` as the real hosts do, so one process can hold
only one of them in `sys.modules` at a time. The Forge set (its `modules.*`, `backend.*`,
`modules_forge`, and the extension's own `sega_webui.*` and script, imported against it) is
loaded once, kept aside, and put in place only inside `active()`; the A1111 set is put back
on the way out. The host-free `sega` package is shared."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types

import webui

STUB = webui.ROOT / "tests" / "forge_stub"
_HOST_PACKAGES = ("modules", "backend", "modules_forge", "sega_webui", "sega_script")
_forge: dict | None = None
_namespace: types.SimpleNamespace | None = None


def _owned(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _HOST_PACKAGES)


def _take_host_modules() -> dict:
    taken = {k: v for k, v in sys.modules.items() if _owned(k)}
    for k in taken:
        del sys.modules[k]
    return taken


@contextlib.contextmanager
def active():
    """The Forge stand-in's modules in `sys.modules` for the block."""
    load()
    a1111 = _take_host_modules()
    sys.modules.update(_forge)
    saved_path = list(sys.path)
    sys.path.insert(0, str(STUB))
    try:
        yield _namespace
    finally:
        sys.path[:] = saved_path
        _forge.update(_take_host_modules())
        sys.modules.update(a1111)


def load() -> types.SimpleNamespace:
    global _forge, _namespace
    if _forge is not None:
        return _namespace
    webui._load_k_diffusion()
    for path in (webui.STUB, webui.ROOT):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    a1111 = _take_host_modules()
    sys.path.insert(0, str(STUB))
    try:
        spec = importlib.util.spec_from_file_location("sega_script", webui.ROOT / "scripts" / "sega.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sega_script"] = module
        spec.loader.exec_module(module)
        from backend import diffusion_engine, memory_management
        from modules import processing, script_callbacks, scripts, shared

        import sega_webui.host as host
        import sega_webui.registration as registration

        _namespace = types.SimpleNamespace(
            registration=registration, processing=processing, shared=shared, scripts=scripts,
            script_callbacks=script_callbacks, script_module=module, host=host,
            diffusion_engine=diffusion_engine, memory_management=memory_management,
        )
    finally:
        sys.path.remove(str(STUB))
        _forge = _take_host_modules()
        sys.modules.update(a1111)
    return _namespace


class Host:
    """txt2img and img2img in the Forge stand-in, with or without SEGA (as host_harness.Host)."""

    def __init__(self):
        self.w = load()
        with active():
            self.script = self.w.script_module.SegaScript()
        self.engines: dict = {}
        self.reported: list[str] = []

    def engine(self, kind: str = "sd1"):
        import host_harness

        if kind not in self.engines:
            self.engines[kind] = self.w.diffusion_engine.ForgeEngine(host_harness.model(kind))
        return self.engines[kind]

    def calls(self, kind: str = "sd1") -> list[int]:
        """The rows of each model call of the last generation on `kind`."""
        return self.engine(kind).forge_objects_original.unet.model.calls

    def generate(self, values=None, kind="sd1", img2img=False, **p_kwargs):
        import host_harness

        from sega.fields import FIELDS

        with active() as w:
            w.shared.opts.sd_model_checkpoint = None
            w.shared.sd_model = self.engine(kind)
            self.calls(kind).clear()
            w.shared.state.reset()
            p_kwargs.setdefault("prompt", "a photo of a face")
            p_kwargs.setdefault("steps", 6)
            entries = [(s, 0) for s in getattr(self, "extra_scripts", ())]
            if values is not None:
                entries.append((self.script, len(FIELDS)))
            runner = w.scripts.ScriptRunner(entries) if entries else None
            if img2img:
                p_kwargs.setdefault("init_images", host_harness.init_latent(p_kwargs.get("width", 64),
                                                                            p_kwargs.get("height", 64)))
                cls = w.processing.StableDiffusionProcessingImg2Img
            else:
                cls = w.processing.StableDiffusionProcessingTxt2Img
            p = cls(script_args=[None] + (list(values) if values is not None else []), scripts=runner, **p_kwargs)
            before = len(w.script_callbacks.reported)
            result = w.processing.process_images(p)
            self.reported = w.script_callbacks.reported[before:] + (runner.reported if runner else [])
            result.p = p
            return result
