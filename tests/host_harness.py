"""Runs txt2img in the WebUI stand-in with and without SEGA."""

from __future__ import annotations

import contextlib
import sys

import tiny_models
import torch
import webui

from sega.fields import FIELDS

UI_DEFAULTS = [f.format(f.default) if f.kind.endswith("steps") else f.default for f in FIELDS]
_models: dict[str, tiny_models.TinyLDM] = {}


def model(kind: str = "sd1") -> tiny_models.TinyLDM:
    if kind not in _models:
        _models[kind] = tiny_models.TinyLDM(kind)
    return _models[kind]


def sega_values(concepts: str = "smile\n-glasses", enabled: bool = True, **named) -> list:
    values = list(UI_DEFAULTS)
    names = [f.name for f in FIELDS]
    values[names.index("enabled")] = enabled
    values[names.index("concepts")] = concepts
    for k, v in named.items():
        values[names.index(k)] = v
    return values


class Host:
    def __init__(self):
        self.w = webui.load()
        self.script = self.w.script_module.SegaScript()
        self.reported: list[str] = []

    def generate(self, values=None, kind="sd1", extension=True, extensions=(), **p_kwargs):
        """Latents of one txt2img run. values=None runs the WebUI without the extension
        (no script and none of its callbacks). `extensions`: stand-ins of other
        extensions' scripts (tests/webui_stub/extensions), run before ours."""
        w = self.w
        w.shared.sd_model = model(kind)
        w.shared.state.reset()
        p_kwargs.setdefault("prompt", "a photo of a face")
        p_kwargs.setdefault("steps", 6)
        runner = None
        scripts = [(e, 0) for e in extensions] + ([(self.script, len(FIELDS))] if values is not None else [])
        if scripts:
            runner = w.scripts.ScriptRunner(scripts)
        p = w.processing.StableDiffusionProcessingTxt2Img(
            script_args=[None] + list(values or []), scripts=runner, **p_kwargs
        )
        before = len(w.script_callbacks.reported)
        with (contextlib.nullcontext() if values is not None else self.without_extension()):
            result = w.processing.process_images(p)
        self.reported = w.script_callbacks.reported[before:] + (runner.reported if runner else [])
        result.p = p
        return result

    @contextlib.contextmanager
    def without_extension(self):
        callbacks = self.w.script_callbacks.callbacks
        host = self.w.host
        ours = {host.on_cfg_denoiser, host.on_cfg_denoised, host.on_cfg_after_cfg}
        saved = {k: list(v) for k, v in callbacks.items()}
        for v in callbacks.values():
            v[:] = [c for c in v if c not in ours]
        try:
            yield
        finally:
            for k, v in saved.items():
                callbacks[k][:] = v

    @contextlib.contextmanager
    def callback(self, kind: str, fn):
        """Register a test callback after ours for the duration of the block."""
        lst = self.w.script_callbacks.callbacks[kind]
        lst.append(fn)
        try:
            yield
        finally:
            lst.remove(fn)


def other_extension(folder: str, file: str):
    """A module of tests/webui_stub/extensions/<folder>/scripts/, loaded from its path like
    the WebUI loads an extension's scripts (its functions then live in that folder)."""
    import importlib.util

    name = f"ext_{folder.replace('-', '_')}_{file}"
    if name not in sys.modules:
        path = webui.STUB / "extensions" / folder / "scripts" / f"{file}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def sampler_frame_step():
    """The loop index `i` of the sampler function that is calling the model right now."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if "i" in frame.f_locals and (code.co_name.startswith("sample_") or code.co_name in ("ddim", "plms", "_restart_like", "dpm_solve_fast")):
            return frame.f_locals["i"]
        frame = frame.f_back
    return None


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.equal(a, b)
