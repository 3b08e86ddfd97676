"""SEGA's cost per step on ComfyUI's path (sega_comfy/patch.py), in the ComfyUI stand-in.

    python bench/comfy.py              # CPU, the tiny shape of bench/run.py, about a minute
    python bench/comfy.py --edit       # the photo edit (sega_comfy/edit.py), about a minute
    python bench/comfy.py --masks      # the implicit masks, SD 1.5 shape at 512² (CPU: about 20 minutes)

ComfyUI evaluates the prompt and the negative prompt as two cond lists of one batched call;
SEGA appends one list per acting concept to that call, so a SEGA step can cost no less than
one call of (2 + N)·B rows. Per step (KSampler, Euler, median of --repeats runs, interleaved;
the prompts encoded beforehand, as ComfyUI caches the text encoders' nodes):

- plain: the KSampler node without SEGA;
- SEGA with N = 1, 2, 4 concepts (warm-up 0: every concept in every step);
- the bound: the plain model with a CALC_COND_BATCH wrapper that only appends N copies of
  the prompt's list — the same rows in the same call, and nothing else;
- SEGA's own time inside its wrappers and post-CFG function, the model call taken out,
  against the step's model call at (2 + N)·B rows (target ≤ 1 %).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import comfy_host  # noqa: E402
import own_time  # noqa: E402
import torch  # noqa: E402
from run import CONCEPTS, TINY, build_model  # noqa: E402

import sega_comfy.patch as path  # noqa: E402
from sega_comfy.nodes import SegaGuidanceNode  # noqa: E402


def checkpoint(shape):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling
    import comfy.sd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ldm = build_model(shape, torch.device("cpu"), torch.float32)
    base = comfy.model_base.BaseModel(UNetModel(ldm.unet), comfy.model_sampling.model_sampling(ldm.alphas_cumprod))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu), comfy.sd.CLIP(ldm)


def bound_model(model, n: int):
    """The plain model whose step call carries n more copies of the prompt's list."""
    import comfy.patcher_extension as pe

    def wrapper(executor, m, conds, x, timestep, options):
        if len(conds) < 2 or conds[1] is None:
            return executor(m, conds, x, timestep, options)
        return executor(m, [*conds, *[conds[0]] * n], x, timestep, options)[: len(conds)]

    bound = model.clone()
    pe.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "bound", wrapper, bound.model_options, is_model_options=True)
    return bound


class Bench:
    def __init__(self, shape, repeats: int):
        import nodes

        self.shape, self.repeats = shape, repeats
        self.model, self.clip = checkpoint(shape)
        self.positive, self.negative = comfy_host.encode(self.clip, "a photo"), comfy_host.encode(self.clip, "")
        self.ksampler = nodes.KSampler()

    def generate(self, model) -> float:
        s = self.shape
        start = comfy_host.latent(s.latent * 8, s.batch)
        t = time.perf_counter()
        with torch.no_grad():
            self.ksampler.sample(model, 1, s.steps, 7.0, "euler", "normal", self.positive, self.negative, start)
        return (time.perf_counter() - t) / s.steps

    def sega(self, n: int, mask: str = "threshold"):
        return SegaGuidanceNode().apply(self.model, self.clip, "\n".join(CONCEPTS[:n]), 5.0, 0.95, "0", "", 1.0, 0.3,
                                        0.6, mask)[0]

    def median_of(self, models):
        for m in models:
            self.generate(m)
        times = [[] for _ in models]
        for _ in range(self.repeats):
            for i, m in enumerate(models):
                times[i].append(self.generate(m))
        return [statistics.median(t) for t in times]

    def own_time(self, n: int):
        with own_time.timed(path.SegaPatch) as spent:
            model = self.sega(n)  # made inside: the model keeps the functions it was given
            self.generate(model)
            spent.update(ours=0.0, model=0.0, steps=0)
            for _ in range(self.repeats):
                self.generate(model)
        return own_time.per_step(spent)


def table(bench) -> list[str]:
    s = bench.shape
    lines = [f"### ComfyUI stand-in — {s.name}, {s.steps} steps (KSampler, euler), batch {s.batch}, CPU float32, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             "| run | per step (ms) | ÷ plain | bound ÷ plain | ÷ bound | target |", "|---|---|---|---|---|---|"]
    for n in (1, 2, 4):
        plain, sega, bound = bench.median_of([bench.model, bench.sega(n), bound_model(bench.model, n)])
        ok = sega <= 1.05 * bound
        lines.append(f"| SEGA, {n} concept{'s' if n > 1 else ''} | {sega * 1e3:.2f} | {sega / plain:.3f} | "
                     f"{bound / plain:.3f} | {sega / bound:.3f} | ≤ 1.05× bound: {'yes' if ok else 'NO'} |")
    own, calls = bench.own_time(4)
    lines += ["", f"SEGA's own time in its wrappers and post-CFG function, 4 concepts (its model call taken out): "
              f"{own * 1e3:.3f} ms per step = {100 * own / calls:.2f} % of the step's model call at 6·B rows "
              f"({calls * 1e3:.2f} ms; target ≤ 1 %)."]
    return lines


def edit_table(bench) -> list[str]:
    """The photo edit: the inversion against a plain sampling pass of the same steps
    (img2img from the photo at strength 1, the same sampler), a cached re-edit with two
    concepts against a plain SEGA pass, and the memory a kept inversion holds."""
    from sega_comfy import edit

    s = bench.shape
    generator = torch.Generator().manual_seed(5)
    photo = {"samples": torch.randn((s.batch, 4, s.latent, s.latent), generator=generator)}
    sampler = "euler_ancestral"
    guided = bench.sega(2)

    def timed(run):
        t = time.perf_counter()
        with torch.no_grad():
            out = run()
        return (time.perf_counter() - t) / s.steps, out

    def plain():
        return bench.ksampler.sample(bench.model, 1, s.steps, 7.0, sampler, "normal", bench.positive, bench.negative,
                                     photo, 1.0)

    def sega_pass():
        return bench.ksampler.sample(guided, 1, s.steps, 7.0, sampler, "normal", bench.positive, bench.negative,
                                     photo, 1.0)

    def invert():
        return edit.SegaInvertNode().invert(bench.model, bench.positive, bench.negative, photo, 1, s.steps, 7.0,
                                            sampler, "normal", 1.0)[0]

    inversion = invert()

    def re_edit():
        return edit.SegaEditNode().edit(guided, bench.positive, bench.negative, 7.0, inversion)

    runs = [plain, invert, sega_pass, re_edit]
    for run in runs:
        timed(run)
    times = [[] for _ in runs]
    for _ in range(bench.repeats):
        for i, run in enumerate(runs):
            times[i].append(timed(run)[0])
    t_plain, t_invert, t_sega, t_edit = (statistics.median(t) for t in times)
    per_512 = inversion.mebibytes / photo["samples"].numel() * (4 * 64 * 64)
    return [f"### ComfyUI stand-in, photo edit — {s.name}, {s.steps} steps ({sampler}), batch {s.batch}, CPU float32, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads", "",
            "| run | per step (ms) | ratio | target |", "|---|---|---|---|",
            f"| plain sampling pass (img2img, strength 1) | {t_plain * 1e3:.2f} | | |",
            f"| inversion | {t_invert * 1e3:.2f} | {t_invert / t_plain:.3f} × plain pass | ≤ 1.05: "
            f"{'yes' if t_invert <= 1.05 * t_plain else 'NO'} |",
            f"| plain SEGA pass, 2 concepts | {t_sega * 1e3:.2f} | | |",
            f"| cached re-edit, 2 concepts | {t_edit * 1e3:.2f} | {t_edit / t_sega:.3f} × SEGA pass | ≤ 1.02: "
            f"{'yes' if t_edit <= 1.02 * t_sega else 'NO'} |", "",
            f"A kept inversion holds {inversion.mebibytes:.3f} MiB here, {per_512:.2f} MiB per 512² image at "
            f"{s.steps} steps (float32 noises, residual and start noise: latent-sized tensors, one per step)."]


def masks_table(repeats: int) -> list[str]:
    """A SEGA step with two concepts under each mask, against the same step with the
    threshold alone: what reading the concept rows' cross-attention (the attn2 patch) and
    the masks' arithmetic add, and the time inside the reader. On SD 1.5's UNet shape at
    512² (random weights; 4 steps: the per-step cost is what is measured)."""
    from dataclasses import replace

    from run import SD15

    bench = Bench(replace(SD15, steps=4), repeats)
    models = [bench.sega(2, mask) for mask in ("threshold", "attention", "intersect")]
    threshold, attention, intersect = bench.median_of(models)
    inside = _reader_time(bench, models[1])
    s = bench.shape
    return [f"### ComfyUI stand-in, implicit masks — {s.name}, {s.steps} steps "
            f"(KSampler, euler), 2 concepts, CPU float32, torch {torch.__version__}, {torch.get_num_threads()} threads",
            "", "| mask | per step (ms) | ÷ threshold |", "|---|---|---|",
            f"| threshold | {threshold * 1e3:.2f} | |",
            f"| attention | {attention * 1e3:.2f} | {attention / threshold:.3f} |",
            f"| intersect | {intersect * 1e3:.2f} | {intersect / threshold:.3f} |", "",
            f"Inside the masks' reader (the attn2 patch's recomputed attention of the concept rows, arming, reading "
            f"back), mask attention: {inside * 1e3:.3f} ms per step = {100 * inside / attention:.2f} % of the step "
            f"(target ≤ 3 %: {'yes' if inside <= 0.03 * attention else 'NO'})."]


def _reader_time(bench, model) -> float:
    """Seconds per step inside the masks' reader during `model`'s runs."""
    import sega_comfy.patch as patch
    from sega.attention import PatchedAttention

    spent = [0.0]
    names = ("patch", "collect", "arm_lists")
    real = {name: getattr(PatchedAttention, name) for name in names}
    real_columns = patch.Run._columns

    def timed(function):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t
        return run

    for name in names:
        setattr(PatchedAttention, name, timed(real[name]))
    patch.Run._columns = timed(real_columns)
    try:
        bench.generate(model)
        spent[0] = 0.0
        for _ in range(bench.repeats):
            bench.generate(model)
    finally:
        for name in names:
            setattr(PatchedAttention, name, real[name])
        patch.Run._columns = real_columns
    return spent[0] / (bench.repeats * bench.shape.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--edit", action="store_true", help="the photo edit instead of the guidance path")
    parser.add_argument("--masks", action="store_true", help="what the implicit masks add to a SEGA step")
    args = parser.parse_args()
    if args.masks:
        print("\n".join(masks_table(args.repeats)))
        return
    bench = Bench(TINY, args.repeats)
    print("\n".join(edit_table(bench) if args.edit else table(bench)))


if __name__ == "__main__":
    main()
