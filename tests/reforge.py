"""Loads the reForge stand-in (tests/reforge_stub over tests/webui_stub) and our script into it.

As tests/forge.py: both stand-ins name their packages `modules` as the real hosts do, so one
process holds only one of them in `sys.modules` at a time. The reForge set (its `modules.*`,
`ldm_patched.*`, `modules_forge.*`, and the extension's own `sega_webui.*` and script,
imported against it) is loaded once, kept aside, and put in place only inside `active()`;
whatever set was there (A1111's) is put back on the way out. A `backend` package (Forge's)
is taken out too while reForge is in place: reForge has none. The host-free `sega` package
is shared."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types

import webui

STUB = webui.ROOT / "tests" / "reforge_stub"
_HOST_PACKAGES = ("modules", "ldm_patched", "modules_forge", "backend", "sega_webui", "sega_script")
_reforge: dict | None = None
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
    """The reForge stand-in's modules in `sys.modules` for the block."""
    load()
    other = _take_host_modules()
    sys.modules.update(_reforge)
    saved_path = list(sys.path)
    sys.path.insert(0, str(STUB))
    try:
        yield _namespace
    finally:
        sys.path[:] = saved_path
        _reforge.update(_take_host_modules())
        sys.modules.update(other)


def load() -> types.SimpleNamespace:
    global _reforge, _namespace
    if _reforge is not None:
        return _namespace
    webui._load_k_diffusion()
    for path in (webui.STUB, webui.ROOT):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    other = _take_host_modules()
    sys.path.insert(0, str(STUB))
    try:
        spec = importlib.util.spec_from_file_location("sega_script", webui.ROOT / "scripts" / "sega.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sega_script"] = module
        spec.loader.exec_module(module)
        import ldm_patched.modules.model_management as model_management
        import ldm_patched.modules.patcher_extension as patcher_extension
        import ldm_patched.modules.samplers as samplers
        from modules import processing, prompt_parser, script_callbacks, scripts, shared
        from modules_forge import forge_loader, forge_sampler

        import sega_webui.host as host
        import sega_webui.hosts as hosts
        import sega_webui.registration as registration

        _namespace = types.SimpleNamespace(
            registration=registration, processing=processing, shared=shared, scripts=scripts,
            script_callbacks=script_callbacks, script_module=module, host=host, hosts=hosts,
            prompt_parser=prompt_parser, samplers=samplers, patcher_extension=patcher_extension,
            model_management=model_management, forge_loader=forge_loader, forge_sampler=forge_sampler,
        )
    finally:
        sys.path.remove(str(STUB))
        _reforge = _take_host_modules()
        sys.modules.update(other)
    return _namespace


class Host:
    """txt2img and img2img in the reForge stand-in, with or without SEGA (as host_harness.Host).
    `extra_scripts`: script objects without args run before ours (e.g. a test's patcher)."""

    def __init__(self):
        self.w = load()
        with active():
            self.script = self.w.script_module.SegaScript()
        self.models: dict = {}
        self.reported: list[str] = []
        self.extra_scripts: list = []

    def model(self, kind: str = "sd1"):
        """`p.sd_model` for `kind`: the A1111 stand-in's tiny model of that kind (a shallow copy:
        same weights) with reForge's `forge_objects`."""
        import host_harness

        if kind not in self.models:
            self.models[kind] = self.w.forge_loader.load_model_for_a1111(host_harness.model(kind))
        return self.models[kind]

    engine = model  # tests/forge.py's name

    def unet(self, kind: str = "sd1"):
        """The pristine UnetPatcher (`forge_objects_original.unet`)."""
        return self.model(kind).forge_objects_original.unet

    def calls(self, kind: str = "sd1") -> list[int]:
        """The rows of each model call of the last generation on `kind`."""
        return self.unet(kind).model.calls

    def timesteps(self, kind: str = "sd1") -> list:
        """The timestep tensor of each model call of the last generation on `kind`."""
        return self.unet(kind).model.timesteps

    def generate(self, values=None, kind="sd1", img2img=False, **p_kwargs):
        import host_harness

        from sega.fields import FIELDS

        with active() as w:
            w.shared.opts.sd_model_checkpoint = None
            w.shared.sd_model = self.model(kind)
            self.calls(kind).clear()
            self.timesteps(kind).clear()
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
