"""SEGA's cost per sampling step, against plain CFG, the bound and the reference pipeline.

    python bench/run.py               # CPU, tiny shapes, about a minute
    python bench/run.py --gpu         # CUDA fp16: SD1.5 at 512² (and 4 images at 768²), SDXL at 1024²
    python bench/run.py --maps-only   # just the guidance maps' cost per step (and the model call)
    python bench/run.py --masks [--gpu]   # the implicit masks' cost per step, SD 1.5 shapes at 512²

In one run and on one random-weight UNet per shape it measures, per sampler step (DDIM,
median of --repeats runs): plain CFG through the WebUI stand-in; our SEGA with N = 1, 2, 4
concepts (defaults, and with cooldown at 50 %) and in low-VRAM mode; diffusers'
SemanticStableDiffusionPipeline with the same settings and without concepts; the bound (one
UNet call at (2+N)·B rows). Ratios are to each side's own plain CFG so they compare across
machines. On the GPU it also runs one generation with torch.cuda.set_sync_debug_mode("error")
around SEGA's callbacks, to show that its step path never waits for the device (with the
guidance maps off and on). The maps' line times what "Show where concepts act" adds per
step at N = 4 against the model call at 6·B rows.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import host_harness  # noqa: E402
import tiny_models  # noqa: E402

from sega.guidance import ConceptGuidance, SegaGuidance  # noqa: E402
from sega.maps import ConceptMaps, MapLabel, render_maps  # noqa: E402

CONCEPTS = ["smiling, smile", "glasses, wearing glasses", "curly hair", "beard"]


@dataclass
class Shape:
    name: str
    latent: int
    batch: int
    steps: int
    unet: dict
    hidden: int
    reference: bool = True
    kind: str = "sd1"
    vector: int = 8


TINY = Shape("tiny (CPU)", 32, 1, 10, dict(sample_size=32, block_out_channels=(32, 64), layers_per_block=1,
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
             cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8), 32)
SD15 = Shape("SD1.5 512², 1 image", 64, 1, 20, dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8), 768)
SD15_BIG = Shape("SD1.5 768², 4 images", 96, 4, 20, SD15.unet, 768)
SDXL = Shape("SDXL 1024², 1 image", 128, 1, 20, dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, class_embed_type="projection", projection_class_embeddings_input_dim=2816), 2048,
    reference=False, kind="sdxl", vector=2816)


def build_model(shape: Shape, device, dtype):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):  # random init where it runs: an SDXL-sized UNet is slow to init on a CPU
        unet = UNet2DConditionModel(**shape.unet).eval()
    ldm = tiny_models.TinyLDM(shape.kind, unet_model=unet, hidden=shape.hidden, vector=shape.vector)
    ldm.unet.to(dtype)
    ldm.text_encoder.to(dtype)  # as in an fp16 pipeline: the reference feeds its embeddings to the UNet as they are
    return ldm.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def peak(device, record):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    yield
    if device.type == "cuda":
        record["peak"] = torch.cuda.max_memory_allocated()


class Bench:
    def __init__(self, shape: Shape, device, dtype, repeats: int):
        self.shape, self.device, self.dtype, self.repeats = shape, device, dtype, repeats
        self.host = host_harness.Host()
        self.host.w.shared.device = device
        self.ldm = build_model(shape, device, dtype)
        host_harness._models[shape.kind] = self.ldm
        self.rows = []

    def _time(self, run, steps):
        return self._time_many([run], steps)[0]

    def _time_many(self, runs, steps):
        """Median time per step of each run, the runs interleaved so drift hits all alike.
        A run that returns a number has timed its own steps (steady state, without the
        per-generation set-up); otherwise its wall time is divided by `steps`."""
        times = [[] for _ in runs]
        peaks = [None] * len(runs)
        for run in runs:
            run()  # warm-up
        for _ in range(self.repeats):
            for i, run in enumerate(runs):
                record = {}
                sync(self.device)
                with peak(self.device, record):
                    t = time.perf_counter()
                    own = run()
                    sync(self.device)
                times[i].append(own if own is not None else (time.perf_counter() - t) / steps)
                peaks[i] = record.get("peak")
        return [(statistics.median(t), pk) for t, pk in zip(times, peaks, strict=True)]

    def stamps(self):
        """A callback that notes the time (after the device caught up) and the notes."""
        seen = []

        def stamp(*_):
            sync(self.device)
            seen.append(time.perf_counter())

        return stamp, seen

    @property
    def webui_steps(self):
        return len(range(0, 1000, 1000 // self.shape.steps)) - 1  # the WebUI's DDIM loop

    def webui_run(self, concepts=None, cooldown="", low_vram=False, widen=0):
        """One generation in the WebUI stand-in; `widen` adds that many B-row blocks to
        every model call without SEGA (the bound: the same path, just a wider call)."""
        s = self.shape
        opts = self.host.w.shared.opts
        values = None if concepts is None else host_harness.sega_values("\n".join(concepts), cooldown=cooldown)

        def run():
            opts.sega_low_vram = low_vram
            stamp, seen = self.stamps()
            hooks = contextlib.ExitStack()
            if widen:
                hooks.enter_context(self.host.callback("cfg_denoiser", _widener(widen)))
            hooks.enter_context(self.host.callback("cfg_denoiser", stamp))  # once per step (DDIM)
            try:
                with hooks:
                    self.host.generate(values, kind=s.kind, sampler_name="DDIM", steps=s.steps, batch_size=s.batch,
                                       width=s.latent * 8, height=s.latent * 8, cfg_scale=7.0)
            finally:
                opts.sega_low_vram = False
            assert self.host.reported == [], self.host.reported[0]
            return (seen[-1] - seen[0]) / (len(seen) - 1)

        return run

    def reference_run(self, n=0, cooldown=False):
        from diffusers import SemanticStableDiffusionPipeline

        s = self.shape
        pipe = SemanticStableDiffusionPipeline(
            vae=tiny_models.vae().to(self.device), text_encoder=self.ldm.text_encoder, tokenizer=self.ldm.tokenizer,
            unet=self.ldm.unet, scheduler=tiny_models.ddim_scheduler(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        latents = torch.randn((s.batch, 4, s.latent, s.latent), device=self.device, dtype=self.dtype)
        kwargs = {}
        if n:
            warmup = round(0.2 * s.steps)  # our default warm-up, 20 %
            kwargs = dict(editing_prompt=CONCEPTS[:n], edit_warmup_steps=[warmup] * n, edit_guidance_scale=[5.0] * n,
                          edit_threshold=[0.95] * n, edit_momentum_scale=0.3, edit_mom_beta=0.6,
                          edit_cooldown_steps=[s.steps // 2] * n if cooldown else None)

        def run():
            stamp, seen = self.stamps()
            with torch.no_grad():
                pipe(prompt=["a photo of a face"] * s.batch, num_inference_steps=s.steps, guidance_scale=7.0,
                     latents=latents, output_type="latent", height=s.latent * pipe.vae_scale_factor,
                     width=s.latent * pipe.vae_scale_factor, callback=stamp, **kwargs)
            return (seen[-1] - seen[0]) / (len(seen) - 1)

        return run

    def unet_call(self, rows):
        s = self.shape
        x = torch.randn((rows, 4, s.latent, s.latent), device=self.device)
        c = torch.randn((rows, 77, s.hidden), device=self.device)
        cond = {"c_crossattn": [c]} if s.kind == "sd1" else {"crossattn": c, "vector": torch.randn((rows, s.vector), device=self.device)}
        t = torch.full((rows,), 500.0, device=self.device)

        def run():
            with torch.no_grad():
                for _ in range(5):
                    self.ldm.apply_model(x, t, cond=cond)

        return self._time(run, 5)

    def arithmetic(self, n=4):
        """The SEGA term alone (engine step) at this shape, N concepts all warm."""
        s = self.shape
        g = SegaGuidance([ConceptGuidance(warmup=0) for _ in range(n)], 0.3, 0.6)
        u = torch.randn((s.batch, 4, s.latent, s.latent), device=self.device, dtype=self.dtype)
        c = torch.randn((n, s.batch, 4, s.latent, s.latent), device=self.device, dtype=self.dtype)
        step = iter(range(10**9))

        def run():
            for _ in range(20):
                g.step(next(step), u, c)

        return self._time(run, 20)

    def maps_cost(self, n=4):
        """What "Show where concepts act" adds per step: the engine's map sum (ConceptMaps.add
        on a step's thresholded terms), and the engine step with and without maps."""
        s = self.shape
        shape = (n, s.batch, 4, s.latent, s.latent)
        psi = torch.randn(shape, device=self.device, dtype=self.dtype)
        applied = torch.ones(n, device=self.device)
        maps = ConceptMaps()
        step = iter(range(10**9))

        def add():
            for _ in range(20):
                maps.add(next(step), psi, applied)

        u = torch.randn(shape[1:], device=self.device, dtype=self.dtype)
        c = torch.randn(shape, device=self.device, dtype=self.dtype)
        engines = [SegaGuidance([ConceptGuidance(warmup=0) for _ in range(n)], 0.3, 0.6, track_maps=t) for t in (False, True)]
        counters = [iter(range(10**9)), iter(range(10**9))]

        def stepper(k):
            def run():
                for _ in range(20):
                    engines[k].step(next(counters[k]), u, c)
            return run

        (add_t, _), (plain_t, _), (maps_t, _) = self._time_many([add, stepper(0), stepper(1)], 20)
        return add_t, plain_t, maps_t

    def render_cost(self, n=4):
        """Making the pictures of one image after sampling (once per image, on the CPU)."""
        from PIL import Image

        s = self.shape
        image = Image.new("RGB", (s.latent * 8, s.latent * 8), (128, 96, 64))
        heats = torch.rand(n, s.latent, s.latent).numpy()
        labels = [MapLabel(c, reverse=i % 2 == 1) for i, c in enumerate(CONCEPTS[:n])]
        t = time.perf_counter()
        for _ in range(3):
            render_maps(image, heats, labels)
        return (time.perf_counter() - t) / 3

    def no_sync_check(self, show_maps=False):
        """One generation with the sync debug mode on inside SEGA's callbacks."""
        callbacks = self.host.w.script_callbacks.callbacks
        host = self.host.w.host
        wrapped = {}

        def guard(fn):
            def inner(params):
                torch.cuda.set_sync_debug_mode("error")
                try:
                    return fn(params)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            return inner

        for kind, fn in (("cfg_denoiser", host.on_cfg_denoiser), ("cfg_denoised", host.on_cfg_denoised),
                         ("cfg_after_cfg", host.on_cfg_after_cfg)):
            lst = callbacks[kind]
            i = lst.index(fn)
            wrapped[kind] = (i, fn)
            lst[i] = guard(fn)
        try:
            s = self.shape
            values = host_harness.sega_values("\n".join(CONCEPTS), cooldown="50%", show_maps=show_maps)
            self.host.generate(values, kind=s.kind,
                               sampler_name="DDIM", steps=s.steps, batch_size=s.batch, width=s.latent * 8,
                               height=s.latent * 8)
            return self.host.reported
        finally:
            for kind, (i, fn) in wrapped.items():
                callbacks[kind][i] = fn


def _widener(n):
    from sega_webui.rows import cat_conds, insert_before_last

    def widen(params):
        b = params.text_uncond.shape[0]
        text = params.text_cond
        make = (lambda d: type(text)(d)) if isinstance(text, dict) else dict
        first = {k: v[:1].repeat_interleave(n * b, 0) for k, v in text.items()} if isinstance(text, dict) else text[:1].repeat(n * b, 1, 1)
        params.text_cond = cat_conds(text, make(first) if isinstance(text, dict) else first, make)
        params.x = insert_before_last(params.x, b, n)
        params.sigma = insert_before_last(params.sigma, b, n)
        params.image_cond = insert_before_last(params.image_cond, b, n)

    return widen


def maps_lines(b: Bench, shape: Shape, unet4: float) -> list[str]:
    add_t, plain_t, maps_t = b.maps_cost(4)
    render_t = b.render_cost(4)
    return [f"Guidance maps per step, 4 concepts: {add_t * 1e3:.3f} ms = {100 * add_t / unet4:.3f} % of the model "
            f"call at 6·B rows ({unet4 * 1e3:.2f} ms; target ≤ 1 %); engine step with maps {maps_t * 1e3:.3f} ms, without "
            f"{plain_t * 1e3:.3f} ms. Pictures, once per image after sampling ({shape.latent * 8}², 4 concepts + "
            f"combined, CPU): {render_t * 1e3:.1f} ms."]


def run_maps_only(shape: Shape, device, dtype, repeats: int) -> list[str]:
    b = Bench(shape, device, dtype, repeats)
    unet4, _ = b.unet_call(6 * shape.batch)
    return [f"### {shape.name}, {device.type} {str(dtype).split('.')[-1]}", "", *maps_lines(b, shape, unet4), ""]


def run_shape(shape: Shape, device, dtype, repeats: int) -> list[str]:
    """Each row is measured interleaved with the plain runs it is divided by, so the
    ratios hold even when the machine's speed drifts between rows."""
    b = Bench(shape, device, dtype, repeats)
    mem = device.type == "cuda"
    ref = shape.reference
    tol = 1.05 if device.type == "cpu" else 1.02
    lines = [f"### {shape.name} — {shape.steps} steps, batch {shape.batch}, {device.type} {str(dtype).split('.')[-1]}", ""]
    head = "| run | per step (ms) | ÷ plain CFG | bound ÷ plain | ÷ bound | reference (ms) | reference ÷ its plain | target |"
    lines += [head + (" peak mem ÷ plain |" if mem else ""), "|---" * (8 + mem) + "|"]

    def measure(runs):
        """[(run, steps)] → (per-step time, peak) of each, interleaved. The runs time their
        own steps."""
        return b._time_many([r for r, _ in runs], 1)

    def row(name, t, plain, bound=None, ref_t=None, ref_plain=None, target="", pk=None, plain_pk=None):
        cells = [name, f"{t * 1e3:.2f}", f"{t / plain:.3f}", "" if bound is None else f"{bound / plain:.3f}",
                 "" if bound is None else f"{t / bound:.3f}", "" if ref_t is None else f"{ref_t * 1e3:.2f}",
                 "" if ref_t is None else f"{ref_t / ref_plain:.3f}", target]
        if mem:
            cells.append("" if pk is None or plain_pk is None else f"{pk / plain_pk:.2f}")
        lines.append("| " + " | ".join(cells) + " |")

    ws, rs = b.webui_steps, shape.steps
    for n in (1, 2, 4):
        runs = [(b.webui_run(), ws), (b.webui_run(concepts=CONCEPTS[:n]), ws), (b.webui_run(widen=n), ws)]
        if ref:
            runs += [(b.reference_run(), rs), (b.reference_run(n), rs)]
        res = measure(runs)
        (plain, plain_pk), (t, pk), (bound, _) = res[:3]
        ref_plain, ref_t = (res[3][0], res[4][0]) if ref else (None, None)
        ok = t <= tol * bound and (not ref or t / plain <= ref_t / ref_plain)
        target = f"≤ {tol}× bound{', ratio ≤ reference' if ref else ''}: {'yes' if ok else 'NO'}"
        row(f"SEGA, {n} concept{'s' if n > 1 else ''}", t, plain, bound, ref_t, ref_plain, target, pk, plain_pk)

    runs = [(b.webui_run(), ws), (b.webui_run(concepts=CONCEPTS, cooldown="50%"), ws)]
    if ref:
        runs += [(b.reference_run(), rs), (b.reference_run(4, cooldown=True), rs)]
    res = measure(runs)
    (plain, plain_pk), (t, pk) = res[:2]
    target = ""
    if ref:
        ref_plain, ref_t = res[2][0], res[3][0]
        share = (t / plain) / (ref_t / ref_plain)
        target = f"≤ 0.8× reference: {'yes' if share <= 0.8 else 'NO'} ({share:.2f})"
    row("SEGA, 4 concepts, cooldown 50%", t, plain, None, ref_t if ref else None, ref_plain if ref else None,
        target, pk, plain_pk)

    (plain, plain_pk), (t, pk) = measure([(b.webui_run(), ws), (b.webui_run(concepts=CONCEPTS, low_vram=True), ws)])
    row("SEGA, 4 concepts, low-VRAM mode", t, plain, target="peak ≤ 1.1× plain" if mem else "", pk=pk,
        plain_pk=plain_pk)

    arith, _ = b.arithmetic(4)
    unet4, _ = b.unet_call(6 * shape.batch)
    lines += ["", f"SEGA arithmetic per step, 4 concepts: {arith * 1e3:.3f} ms = {100 * arith / unet4:.2f} % of the "
              f"model call at 6·B rows ({unet4 * 1e3:.2f} ms; target ≤ 1 % on the GPU shapes)."]
    lines += maps_lines(b, shape, unet4)
    if device.type == "cuda":
        for show_maps in (False, True):
            problems = b.no_sync_check(show_maps)
            lines.append(f"Sync check (set_sync_debug_mode('error') inside SEGA's callbacks, one generation"
                         f"{', maps on' if show_maps else ''}): "
                         f"{'no sync' if not problems else 'FAILED: ' + problems[0].splitlines()[-1]}.")
    return lines + [""]


def run_masks(repeats: int, n: int = 2, device=None, dtype=torch.float32) -> list[str]:
    """What the implicit masks add to a step at SD 1.5 shapes, 512², one image, N concepts (on
    the CPU in fp32, or --gpu: CUDA fp16): the hooks' recomputed attention in the model call (measured on the real
    latent/4 layers with their real inputs, and as the whole call with and without the hooks
    armed) and the engine's mask arithmetic, against one step (the model call at (2+N) rows
    plus the engine's threshold step)."""
    from sega.masks import attention_grid
    from sega_webui import attention

    shape = SD15
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**shape.unet).eval()
        if dtype != torch.float32:
            unet = unet.to(dtype)
        rows = 2 + n
        x = torch.randn((rows, 4, shape.latent, shape.latent), dtype=dtype)
        context = torch.randn((rows, 77, shape.hidden), dtype=dtype)
        t = torch.full((rows,), 500.0)
    grid = attention_grid(shape.latent, shape.latent)
    columns = torch.zeros(n, 77, device=device)
    columns[:, 1:4] = 1.0  # three words each
    hooks = attention.ConceptAttention(unet)
    inputs = []

    def keep(module, args, kwargs, output):
        x_in = args[0] if args else kwargs["hidden_states"]
        if x_in.shape[1] == grid[0] * grid[1]:
            inputs.append((module, x_in[1 : 1 + n].clone(), kwargs["encoder_hidden_states"][1 : 1 + n].clone()))

    handles = [m.register_forward_hook(keep, with_kwargs=True) for _, m in hooks.layers]
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    for h in handles:
        h.remove()

    def plain():
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=context)

    def hooked():
        hooks.arm(1, n, grid, columns)
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=context)
        hooks.collect(grid)

    def recompute():
        with torch.no_grad():
            for module, q_in, c_in in inputs:
                attention.concept_attention(module, q_in, c_in, columns)

    with torch.device(device):
        u = torch.randn((1, 4, shape.latent, shape.latent), dtype=dtype)
        c = torch.randn((n, 1, 4, shape.latent, shape.latent), dtype=dtype)
        maps = torch.rand(n, 1, *grid)
        early = torch.tensor([False])
    engines = {mode: SegaGuidance([ConceptGuidance(warmup=0, mask=mode) for _ in range(n)], 0.3, 0.6)
               for mode in ("threshold", "attention", "intersect")}

    def engine(mode):
        counter = iter(range(10**9))

        def run():
            for _ in range(20):
                engines[mode].step(next(counter), u, c, attention=None if mode == "threshold" else maps, early=early)
        return run

    timer = Bench.__new__(Bench)
    timer.device, timer.repeats = device, repeats
    (plain_t, _), (hooked_t, _) = timer._time_many([plain, hooked], 1)
    (recompute_t, _), = timer._time_many([recompute], 1)
    (thr_t, _), (att_t, _), (int_t, _) = timer._time_many([engine("threshold"), engine("attention"),
                                                          engine("intersect")], 20)
    step = plain_t + thr_t
    cost = recompute_t + (int_t - thr_t)
    return [
        f"### Implicit masks, {shape.name}, N = {n}, {device.type} {str(dtype).split('.')[-1]} "
        f"({torch.cuda.get_device_name() if device.type == 'cuda' else str(torch.get_num_threads()) + ' threads'}), "
        f"{len(inputs)} latent/4 layers ({grid[0]}×{grid[1]} queries)", "",
        "| part | ms | % of a step |", "|---|---|---|",
        f"| step: model call at {rows} rows + threshold engine step | {step * 1e3:.1f} | 100 |",
        f"| hooks' recomputed attention (concept rows, {len(inputs)} layers) | {recompute_t * 1e3:.2f} | "
        f"{100 * recompute_t / step:.2f} |",
        f"| model call with the hooks armed − without (noisy) | {(hooked_t - plain_t) * 1e3:.1f} | "
        f"{100 * (hooked_t - plain_t) / step:.2f} |",
        f"| engine: attention − threshold | {(att_t - thr_t) * 1e3:.2f} | {100 * (att_t - thr_t) / step:.3f} |",
        f"| engine: intersect − threshold | {(int_t - thr_t) * 1e3:.2f} | {100 * (int_t - thr_t) / step:.3f} |",
        f"| **mask cost (recompute + intersect arithmetic)** | {cost * 1e3:.2f} | **{100 * cost / step:.2f}** "
        f"(target ≤ 3 %: {'yes' if cost <= 0.03 * step else 'NO'}) |",
        "",
        f"Threshold mode: no hook is put on any layer and the engine runs SEGA's own path "
        f"({thr_t * 1e3:.2f} ms per engine step at this shape).", "",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="CUDA, fp16, SD1.5 and SDXL shapes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default=None, help="comma list of: tiny, sd15, sd15big, sdxl")
    parser.add_argument("--maps-only", action="store_true", help="only the guidance maps' cost (and the model call)")
    parser.add_argument("--masks", action="store_true", help="only the implicit masks' cost (SD 1.5 512²)")
    args = parser.parse_args()
    if args.masks:
        gpu = (torch.device("cuda"), torch.float16) if args.gpu else (torch.device("cpu"), torch.float32)
        print("\n".join(run_masks(args.repeats, 2, *gpu)))
        return
    shapes = {"tiny": TINY, "sd15": SD15, "sd15big": SD15_BIG, "sdxl": SDXL}
    if args.gpu:
        device, dtype, names = torch.device("cuda"), torch.float16, ["sd15", "sd15big", "sdxl"]
    else:
        device, dtype, names = torch.device("cpu"), torch.float32, ["tiny"]
    if args.shapes:
        names = args.shapes.split(",")
    out = ["## Results", "", f"`python bench/run.py{' --gpu' if args.gpu else ''}` — torch {torch.__version__}, "
           f"{torch.cuda.get_device_name() if args.gpu else 'CPU, ' + str(torch.get_num_threads()) + ' threads'}", ""]
    for name in names:
        out += (run_maps_only if args.maps_only else run_shape)(shapes[name], device, dtype, args.repeats)
    print("\n".join(out))


if __name__ == "__main__":
    main()
