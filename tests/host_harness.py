"""Runs txt2img and img2img in the WebUI stand-in with and without SEGA."""

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
    """kind: "sd1", "sdxl", "v", "inpaint", or "sd3" / "sd3-t5" (SD3 without or with T5),
    "sd3mm" / "sd3mm-t5" (the same over the WebUI's MMDiT layout instead of a UNet);
    "<kind>+attn": with cross-attention on the latent/4 grid and the WebUI's tokenizer face
    (the masks need both); "quadrant": `QuadrantLDM`."""
    if kind not in _models:
        if kind.startswith("sd3"):
            with t5_option(kind.endswith("-t5")):
                _models[kind] = tiny_models.TinySD3(mmdit=kind.startswith("sd3mm"))
        elif kind == "quadrant":
            _models[kind] = tiny_models.QuadrantLDM()
        elif kind.endswith("+attn"):
            _models[kind] = tiny_models.attention_ldm(kind[: -len("+attn")])
        else:
            _models[kind] = tiny_models.TinyLDM(kind)
    return _models[kind]


def checkpoint(title: str, kind: str = "sd1", seed: int = 0) -> str:
    """Register a checkpoint "file" of the stand-in's `sd_models` with a tiny model of `kind`
    (its config), weights from `seed`; returns its title for `refiner_checkpoint`."""
    from modules import sd_models

    def build():
        if kind.startswith("sd3"):
            return tiny_models.TinySD3(seed=seed)
        if kind.endswith("+attn"):
            return tiny_models.attention_ldm(kind[: -len("+attn")], seed=seed)
        return tiny_models.TinyLDM(kind, seed=seed)

    return sd_models.register(sd_models.CheckpointInfo(title, build, kind)).title


@contextlib.contextmanager
def t5_option(enabled: bool):
    """Settings → Stable Diffusion 3 → Enable T5, for the block."""
    from modules import shared

    saved = shared.opts.sd3_enable_t5
    shared.opts.sd3_enable_t5 = enabled
    try:
        yield
    finally:
        shared.opts.sd3_enable_t5 = saved


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

    def generate(self, values=None, kind="sd1", extension=True, img2img=False, other_scripts=(), extensions=(),
                 checkpoint=None, **p_kwargs):
        """Latents of one txt2img (or img2img) run. values=None runs the WebUI without the
        extension (no script and none of its callbacks). other_scripts: [(script, args)] that
        run before ours; `extensions`: stand-ins of other extensions' scripts without args
        (tests/webui_stub/extensions), run before ours too. `checkpoint`: the title of a
        checkpoint (`checkpoint(...)`) that the WebUI loads as the selected one, instead of `kind`."""
        w = self.w
        w.shared.opts.sd_model_checkpoint = checkpoint
        if checkpoint is None:
            w.shared.sd_model = model(kind)
        w.shared.state.reset()
        p_kwargs.setdefault("prompt", "a photo of a face")
        p_kwargs.setdefault("steps", 6)
        entries = [(e, 0) for e in extensions] + [(s, len(a)) for s, a in other_scripts]
        args = [a for _, script_args in other_scripts for a in script_args]
        if values is not None:
            entries.append((self.script, len(FIELDS)))
            args += list(values)
        runner = w.scripts.ScriptRunner(entries) if entries else None
        if img2img:
            p_kwargs.setdefault("init_images", init_latent(p_kwargs.get("width", 64), p_kwargs.get("height", 64)))
            cls = w.processing.StableDiffusionProcessingImg2Img
        else:
            cls = w.processing.StableDiffusionProcessingTxt2Img
        p = cls(script_args=[None] + args, scripts=runner, **p_kwargs)
        before = len(w.script_callbacks.reported)
        with (contextlib.nullcontext() if values is not None else self.without_extension()), \
                t5_option(kind.startswith("sd3") and kind.endswith("-t5")):
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
    def guided_steps(self):
        """The sampler steps (0-based, in call order) in which SEGA's term was non-zero."""
        steps = []

        def spy(params):
            record = self.w.host._current.record
            if record is not None and record.term is not None and record.term.abs().max() > 0:
                steps.append(record.step)

        with self.callback("cfg_denoised", spy):
            yield steps

    @contextlib.contextmanager
    def callback(self, kind: str, fn, first: bool = False):
        """Register a test callback after ours (or before every other one) for the block."""
        lst = self.w.script_callbacks.callbacks[kind]
        lst.insert(0 if first else len(lst), fn)
        try:
            yield
        finally:
            lst.remove(fn)


def fail_engine_step_at(monkeypatch, call: int, message: str = "boom") -> None:
    """Make the guidance engine's `call`-th step (1-based, counted over the test) raise."""
    from sega.guidance import SegaGuidance

    real_step = SegaGuidance.step
    calls = {"n": 0}

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError(message)
        return real_step(self, *a, **kw)

    monkeypatch.setattr(SegaGuidance, "step", failing)


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


def init_latent(width=64, height=64, images=1, seed=1234):
    """A fixed "photo" for img2img: a latent with some structure, not plain noise."""
    g = torch.Generator().manual_seed(seed)
    h, w = height // 8, width // 8
    ramp = torch.linspace(-1, 1, w).view(1, 1, 1, w) * torch.linspace(1, -1, h).view(1, 1, h, 1)
    return ramp.repeat(images, 4, 1, 1) + 0.3 * torch.randn(images, 4, h, w, generator=g)


def sampler_frame_step():
    """The loop index `i` of the sampler function that is calling the model right now."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if "i" in frame.f_locals and (code.co_name.startswith("sample_") or code.co_name in (
                "ddim", "plms", "_restart_like", "dpm_solve_fast", "evaluate")):
            return frame.f_locals["i"]
        frame = frame.f_back
    return None


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.equal(a, b)
