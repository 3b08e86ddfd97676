"""What the Forge and reForge stand-in harnesses (tests/forge.py, tests/reforge.py) share.

Every stand-in names its packages `modules` as the real hosts do, so one process holds only
one of them in `sys.modules` at a time. A stand-in's set (its host packages and the
extension's own `sega_webui.*` and script, imported against it) is loaded once, kept aside,
and put in place only inside `active()`; whatever set was there (A1111's) is put back on the
way out. The host-free `sega` package is shared."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types

import webui


class Loader:
    """One stand-in's module set: `stub` (its folder), `packages` (the top-level names it
    owns, and those it must not see of another host), `imports()` → the namespace of its
    modules that the harness and the tests use, imported with the set in place."""

    def __init__(self, stub, packages: tuple, imports):
        self.stub, self.packages, self.imports = stub, (*packages, "sega_webui", "sega_script"), imports
        self.modules: dict | None = None
        self.namespace: types.SimpleNamespace | None = None

    def _take(self) -> dict:
        taken = {k: v for k, v in sys.modules.items()
                 if any(k == p or k.startswith(p + ".") for p in self.packages)}
        for k in taken:
            del sys.modules[k]
        return taken

    @contextlib.contextmanager
    def active(self):
        """The stand-in's modules in `sys.modules` for the block."""
        self.load()
        other = self._take()
        sys.modules.update(self.modules)
        saved_path = list(sys.path)
        sys.path.insert(0, str(self.stub))
        try:
            yield self.namespace
        finally:
            sys.path[:] = saved_path
            self.modules.update(self._take())
            sys.modules.update(other)

    def load(self) -> types.SimpleNamespace:
        if self.modules is not None:
            return self.namespace
        webui._load_k_diffusion()
        for path in (webui.STUB, webui.ROOT):
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
        other = self._take()
        sys.path.insert(0, str(self.stub))
        try:
            spec = importlib.util.spec_from_file_location("sega_script", webui.ROOT / "scripts" / "sega.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules["sega_script"] = module
            spec.loader.exec_module(module)
            from modules import processing, script_callbacks, scripts, shared

            import sega_webui.host as host
            import sega_webui.registration as registration

            self.namespace = types.SimpleNamespace(
                registration=registration, processing=processing, shared=shared, scripts=scripts,
                script_callbacks=script_callbacks, script_module=module, host=host, **self.imports())
        finally:
            sys.path.remove(str(self.stub))
            self.modules = self._take()
            sys.modules.update(other)
        return self.namespace


class Host:
    """txt2img and img2img in a stand-in, with or without SEGA (as host_harness.Host).
    `extra_scripts`: script objects without args run before ours (e.g. a test's patcher).
    A subclass says which `p.sd_model` a kind of model is (`engine`) and where its model
    calls are recorded (`calls`, `clear_records`)."""

    loader: Loader

    def __init__(self):
        self.w = self.loader.load()
        with self.loader.active():
            self.script = self.w.script_module.SegaScript()
        self.engines: dict = {}
        self.reported: list[str] = []
        self.extra_scripts: list = []

    def engine(self, kind: str = "sd1"):
        raise NotImplementedError

    def calls(self, kind: str = "sd1") -> list[int]:
        raise NotImplementedError

    def clear_records(self, kind: str) -> None:
        self.calls(kind).clear()

    def generate(self, values=None, kind="sd1", img2img=False, **p_kwargs):
        import host_harness

        from sega.fields import FIELDS

        with self.loader.active() as w:
            w.shared.opts.sd_model_checkpoint = None
            w.shared.sd_model = self.engine(kind)
            self.clear_records(kind)
            w.shared.state.reset()
            p_kwargs.setdefault("prompt", "a photo of a face")
            p_kwargs.setdefault("steps", 6)
            entries = [(s, 0) for s in self.extra_scripts]
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
