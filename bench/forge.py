"""SEGA's cost per step on Forge's path (sega_webui/forge.py), in the Forge stand-in.

    python bench/forge.py            # CPU, the tiny shape of bench/run.py, about a minute
    python bench/forge.py --flux     # CPU, a Flux-shaped transformer at CFG 1, with and without masks
    python bench/forge.py --flux-edit  # CPU, editing a photo on that transformer: the inversion's cost

Forge evaluates the prompt and the negative prompt in one call of 2B rows; SEGA adds one
call of N·B rows for the concepts (forge-contract.md §1), so a SEGA step can cost no less
than those two calls. Per step (Euler, median of --repeats runs, interleaved):

- plain: a txt2img generation without SEGA;
- SEGA with N = 1, 2, 4 concepts (warm-up 0: every concept in every step);
- the bound: the plain generation with a post-CFG function that only makes the concepts'
  call — the same rows through the same `calc_cond_uncond_batch`, and nothing else;
- SEGA's own time inside its pre/post-CFG functions, its model call taken out, against the
  step's model calls at (2 + N)·B rows, as bench/run.py counts the arithmetic on A1111
  (target ≤ 1 %), and against a plain step.

With --flux: a Flux-shaped transformer in the stand-in's layout (backend/nn/flux.py: 4
double- and 8 single-stream blocks, width 128, 256 T5 tokens, a 32 × 32 latent = 256 image
tokens) at CFG 1 with its distilled guidance, where a plain step is one call of B rows and
SEGA's is a call of 2B (the prompt and the negative prompt) and one of N·B: the bound is the
plain generation with Forge's CFG-1 shortcut off and a post-CFG function making the N·B
call; the masks' cost is SEGA with `mask=attention` against SEGA without, the same rows, and
the time spent inside the masks' hooks and read-back against the masked step (target ≤ 3 %
of a step).

With --flux-edit: img2img on that transformer at strength 1.0, CFG 1, Euler a (Forge's
rectified-flow variant on Flux), 12 steps, batch 1 — the sampler launch of plain img2img, of
img2img with SEGA (1 concept), of a first edit (inversion, then sampling) and of a second
edit from the cache, and the inversion alone (target ≤ 1.05 × the plain img2img pass).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import edit_runs as R  # noqa: E402
import forge  # noqa: E402
import host_harness  # noqa: E402
from patcher_bench import PatcherBench, bound_table  # noqa: E402
from run import CONCEPTS, TINY  # noqa: E402


class ForgeBench(PatcherBench):
    def __init__(self, shape, repeats: int):
        super().__init__(forge, shape, repeats)

    def runs(self, n):
        values = host_harness.sega_values("\n".join(CONCEPTS[:n]), warmup="0")
        return [lambda: self.generate(), lambda: self.generate(values),
                lambda: self.generate(scripts=[ConceptCall(n)])]

    def own_time(self, n):
        """Seconds per step inside SEGA's pre/post-CFG functions, its model call taken out,
        and one plain model call of 2B rows."""
        with forge.active():
            from backend.sampling import sampling_function as sf

            import sega_webui.forge as forge_path
            real_post, real_call = forge_path.ForgePatch.post_cfg, sf.calc_cond_uncond_batch
            spent = {"post": 0.0, "model": 0.0, "all_model": 0.0, "steps": 0, "inside": False}

            def timed_call(*args, **kwargs):
                t = time.perf_counter()
                out = real_call(*args, **kwargs)
                elapsed = time.perf_counter() - t
                spent["all_model"] += elapsed  # the host's 2B rows and SEGA's N·B
                if spent["inside"]:  # SEGA's own call, not the host's
                    spent["model"] += elapsed
                return out

            def timed_post(self, args):
                spent["inside"] = True
                t = time.perf_counter()
                try:
                    return real_post(self, args)
                finally:
                    spent["post"] += time.perf_counter() - t
                    spent["steps"] += 1
                    spent["inside"] = False

            forge_path.ForgePatch.post_cfg, sf.calc_cond_uncond_batch = timed_post, timed_call
            try:
                self.generate(host_harness.sega_values("\n".join(CONCEPTS[:n]), warmup="0"))
                spent.update(post=0.0, model=0.0, all_model=0.0, steps=0)
                self.generate(host_harness.sega_values("\n".join(CONCEPTS[:n]), warmup="0"))
            finally:
                forge_path.ForgePatch.post_cfg, sf.calc_cond_uncond_batch = real_post, real_call
        return (spent["post"] - spent["model"]) / spent["steps"], spent["all_model"] / spent["steps"]


FLUX = dict(hidden_size=128, num_heads=2, depth=4, depth_single_blocks=8, axes_dim=(16, 24, 24), mlp_ratio=4.0)


class FluxBench(ForgeBench):
    cfg_scale = 1.0

    def __init__(self, repeats: int):
        from types import SimpleNamespace

        PatcherBench.__init__(self, forge, SimpleNamespace(kind="flux", steps=12, batch=1, latent=32), repeats,
                              model=False)
        with forge.active():
            from backend.diffusion_engine import FluxEngine
            from backend.nn.flux import IntegratedFluxTransformer2DModel

            torch.manual_seed(0)
            network = IntegratedFluxTransformer2DModel(in_channels=4, vec_in_dim=8, context_in_dim=FluxEngine.WIDTH,
                                                       **FLUX).eval()
            self.host.engines["flux"] = FluxEngine(host_harness.model("sd1"), network=network)

    def runs(self, n):
        values = host_harness.sega_values("\n".join(CONCEPTS[:n]), warmup="0")
        masked = host_harness.sega_values("\n".join(CONCEPTS[:n]), warmup="0", mask="attention")
        return [lambda: self.generate(), lambda: self.generate(values),
                lambda: self.generate(scripts=[ConceptCall(n, cfg_1=True)]), lambda: self.generate(masked)]


def mask_time(bench, n: int) -> tuple[float, float]:
    """(seconds per step inside the masks' hooks and read-back, seconds per masked SEGA
    step): the hooks timed directly, so the share does not drown in run-to-run noise."""
    values = host_harness.sega_values("\n".join(CONCEPTS[:n]), warmup="0", mask="attention")
    with forge.active():
        from sega_webui import joint_attention

        cls = joint_attention.JointAttention
        real = {name: getattr(cls, name) for name in ("_normed", "_block_called", "collect", "arm")}
        spent = [0.0]

        def timed(fn):
            def run(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - t
            return run

        for name, fn in real.items():
            setattr(cls, name, timed(fn))
        try:
            bench.generate(values)
            spent[0] = 0.0
            step = bench.generate(values)
            inside = spent[0] / bench.shape.steps
        finally:
            for name, fn in real.items():
                setattr(cls, name, fn)
    return inside, step


class ConceptCall:
    """The bound's script: a post-CFG function that makes a call of N·B rows from the
    prompt's cond dict, as SEGA's does, and changes nothing (`cfg_1`: N·B + B rows, the
    negative prompt's behind the concepts', as SEGA's call at CFG 1)."""

    def __init__(self, n, cfg_1=False):
        self.n, self.cfg_1 = n, cfg_1

    def process_before_every_sampling(self, p, *args, **kwargs):
        from backend.sampling.sampling_function import calc_cond_uncond_batch

        rows = self.n + self.cfg_1
        unet = p.sd_model.forge_objects.unet.clone()

        def post(args):
            x = args["input"]
            calc_cond_uncond_batch(args["model"], [args["cond"][0]], None, x.repeat(rows, 1, 1, 1),
                                   args["sigma"].repeat(rows), args["model_options"])
            return args["denoised"]

        unet.set_model_sampler_post_cfg_function(post)
        p.sd_model.forge_objects.unet = unet


def flux_table(repeats: int) -> list[str]:
    b = FluxBench(repeats)
    lines = [f"### Forge path, Flux-shaped — width {FLUX['hidden_size']}, {FLUX['depth']} double + "
             f"{FLUX['depth_single_blocks']} single blocks, 256 text + 256 image tokens, CFG 1, {b.shape.steps} "
             f"steps (Euler), batch 1, CPU float32, torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             "| run | per step (ms) | ÷ plain | bound ÷ plain | ÷ bound | masks ÷ SEGA | target |",
             "|---|---|---|---|---|---|---|"]
    shares = []
    for n in (1, 2, 4):
        plain, sega, bound, masked = b.median_of(b.runs(n))
        inside, step = mask_time(b, n)
        shares.append(f"{n}: {inside * 1e3:.2f} ms = {100 * inside / step:.2f} %")
        ok = sega <= 1.05 * bound and inside <= 0.03 * step
        lines.append(f"| SEGA, {n} concept{'s' if n > 1 else ''} | {sega * 1e3:.2f} | {sega / plain:.3f} | "
                     f"{bound / plain:.3f} | {sega / bound:.3f} | {masked / sega:.3f} | "
                     f"≤ 1.05× bound, masks ≤ 3 % of a step: {'yes' if ok else 'NO'} |")
    lines += ["", "The masks' own time per step (hooks and read-back, timed inside them), against the masked "
              "SEGA step, by concepts — " + "; ".join(shares) + "."]
    return lines


def flux_edit_table(repeats: int) -> list[str]:
    b = FluxBench(repeats)
    host, steps = b.host, b.shape.steps
    with forge.active():
        from modules import sd_samplers_common
    edit = host.w.host.edit
    size = b.shape.latent * 8
    runs = R.runs(host, edit, kind="flux", img2img=True, init_images=host_harness.init_latent(size, size),
                          sampler_name="Euler a", steps=steps, denoising_strength=1.0, width=size, height=size,
                          cfg_scale=1.0)
    launches = {name: [] for name in runs}
    inversions, calls = [], {}
    real_launch, real_invert = sd_samplers_common.Sampler.launch_sampling, edit.invert

    def timed(into, fn):
        t = time.perf_counter()
        out = fn()
        into.append(time.perf_counter() - t)
        return out

    current = []
    sd_samplers_common.Sampler.launch_sampling = lambda s, n, f: timed(current, lambda: real_launch(s, n, f))
    edit.invert = lambda *a, **kw: timed(inversions, lambda: real_invert(*a, **kw))
    try:
        for _ in range(repeats + 1):  # the first round warms up
            for name, fn in runs.items():
                current.clear()
                fn()
                launches[name].append(current[-1])
                calls[name] = list(host.calls("flux"))
    finally:
        sd_samplers_common.Sampler.launch_sampling, edit.invert = real_launch, real_invert
    med = {name: statistics.median(times[1:]) for name, times in launches.items()}
    inv = statistics.median(inversions[1:])
    plain, sega, first, again = (med[name] for name in (R.PLAIN, R.SEGA, R.FIRST, R.AGAIN))
    n_plain = len(calls[R.PLAIN])

    def counted(name):  # Forge's calls of B rows in the inversion and in sampling, and SEGA's of 2B
        seg = calls[name].count(2)
        return f"{len(calls[name]) - seg - n_plain} + {n_plain} (+ {seg} of SEGA's)"

    lines = [f"### Forge path, Flux-shaped, editing a photo — the transformer above, {size}² image "
             f"({b.shape.latent}² latent), Euler a (rectified-flow variant), {steps} steps, strength 1.0, CFG 1, "
             f"batch 1, CPU float32, torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
             f"{repeats}", "",
             "| run | sampler launch (ms) | model calls (inversion + sampling) | ratio | target |",
             "|---|---|---|---|---|",
             f"| plain img2img | {plain * 1e3:.1f} | {counted(R.PLAIN)} |  |  |",
             f"| inversion alone | {inv * 1e3:.1f} | {counted(R.FIRST).split(' +')[0]} | "
             f"{inv / plain:.3f} × plain img2img | ≤ 1.05: {'yes' if inv / plain <= 1.05 else 'NO'} |",
             f"| img2img with SEGA, 1 concept | {sega * 1e3:.1f} | {counted(R.SEGA)} | "
             f"{sega / plain:.3f} × plain img2img |  |",
             f"| edit, first (inverts, then samples) | {first * 1e3:.1f} | "
             f"{counted(R.FIRST)} | {first / sega:.3f} × img2img with SEGA |  |",
             f"| edit, again (cached) | {again * 1e3:.1f} | {counted(R.AGAIN)} | "
             f"{again / sega:.3f} × img2img with SEGA |  |"]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flux", action="store_true", help="the Flux-shaped table instead")
    parser.add_argument("--flux-edit", action="store_true", help="the Flux-shaped photo-editing table instead")
    args = parser.parse_args()
    if args.flux_edit:
        print("\n".join(flux_edit_table(args.repeats)))
        return
    if args.flux:
        print("\n".join(flux_table(args.repeats)))
        return
    print("\n".join(bound_table(ForgeBench(TINY, args.repeats), "Forge path", "its pre/post-CFG functions")))


if __name__ == "__main__":
    main()
