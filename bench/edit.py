"""Benchmark: what editing a photo costs — the inversion against the img2img pass it mirrors,
a second (cached) edit against plain img2img with SEGA, and the memory a kept inversion takes.

    python bench/edit.py            # CPU: tiny SD-shaped UNet, 512² image (64² latent), 20 steps
    python bench/edit.py --gpu      # CUDA fp16: SD1.5-shaped UNet at 512²

Every number comes from the WebUI stand-in's img2img pass (tests/webui_stub, the real
k-diffusion Euler a) at denoising strength 1.0, batch 1. Times are the sampler's launch
(`Sampler.launch_sampling`: the model calls and the sampler's arithmetic, without the
per-generation set-up) and the inversion itself (`sega_webui.edit.invert`), medians of
interleaved repeats, so drift hits all rows alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT), str(ROOT / "bench")]

import edit_runs  # noqa: E402
import host_harness  # noqa: E402
import run as bench_run  # noqa: E402  (the shapes and model builder of bench/run.py)
import webui  # noqa: E402

webui.load()
from modules import sd_samplers_common  # noqa: E402

import sega_webui.edit as edit  # noqa: E402

STEPS = 20


class Timers:
    """Wall time of every sampler launch and every inversion, and model calls per phase."""

    def __init__(self, device):
        self.device = device
        self.launches, self.inversions = [], []
        self.calls = {"inversion": 0, "sampling": 0}

    def __enter__(self):
        self._launch, self._invert = sd_samplers_common.Sampler.launch_sampling, edit.invert
        timers = self

        def launch(sampler, steps, func):
            return timers._timed(timers.launches, lambda: timers._launch(sampler, steps, func))

        def invert(*a, **kw):
            return timers._timed(timers.inversions, lambda: timers._invert(*a, **kw))

        sd_samplers_common.Sampler.launch_sampling = launch
        edit.invert = invert
        return self

    def __exit__(self, *exc):
        sd_samplers_common.Sampler.launch_sampling = self._launch
        edit.invert = self._invert

    def _timed(self, into, fn):
        bench_run.sync(self.device)
        t = time.perf_counter()
        out = fn()
        bench_run.sync(self.device)
        into.append(time.perf_counter() - t)
        return out

    def count(self, params):
        pass_ = getattr(getattr(params.denoiser.p, "sega_run", None), "current", None)
        self.calls["inversion" if getattr(pass_, "inverting", False) else "sampling"] += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    a = parser.parse_args()
    device = torch.device("cuda" if a.gpu else "cpu")
    dtype = torch.float16 if a.gpu else torch.float32
    base = bench_run.SD15 if a.gpu else bench_run.TINY
    shape = dataclasses.replace(base, latent=64, batch=1, steps=STEPS, unet={**base.unet, "sample_size": 64})
    b = bench_run.Bench(shape, device, dtype, a.repeats)
    host = b.host
    init = host_harness.init_latent(512, 512).to(device)
    runs = edit_runs.runs(host, edit, img2img=True, sampler_name="Euler a", steps=STEPS, denoising_strength=1.0,
                          width=512, height=512, init_images=init, kind=shape.kind, cfg_scale=7.0)

    launch = {k: [] for k in runs}
    inversion = []
    calls = {}
    for _ in range(a.repeats + 1):
        for name, fn in runs.items():
            with Timers(device) as t, host.callback("cfg_denoiser", t.count, first=True):
                fn()
            launch[name].append(t.launches[-1])
            if t.inversions:
                inversion.append(t.inversions[-1])
            calls[name] = dict(t.calls)
    med = {k: statistics.median(v[1:]) for k, v in launch.items()}
    inv = statistics.median(inversion[1:])
    kept, size = edit.cache_stats()
    plain, sega = med["plain img2img"], med["img2img with SEGA (1 concept)"]
    print(f"### {device.type.upper()} — `python bench/edit.py{' --gpu' if a.gpu else ''}`, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print()
    print(f"{shape.name.split(',')[0]}-shaped random-weight UNet, 512² image (64² latent), Euler a, {STEPS} steps, "
          f"strength 1.0, batch 1, {'fp16' if a.gpu else 'fp32'}; medians of {a.repeats}.")
    print()
    print("| run | sampler launch (ms) | model calls (inversion + sampling) | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| plain img2img | {plain * 1e3:.1f} | {calls['plain img2img']['sampling']} |  |  |")
    print(f"| inversion alone | {inv * 1e3:.1f} | {calls['edit, first (inverts)']['inversion']} | "
          f"{inv / plain:.3f} × plain img2img | ≤ 1.05: {'yes' if inv / plain <= 1.05 else 'NO'} |")
    print(f"| img2img with SEGA, 1 concept | {sega * 1e3:.1f} | {calls['img2img with SEGA (1 concept)']['sampling']} "
          f"| {sega / plain:.3f} × plain img2img |  |")
    first = med["edit, first (inverts)"]
    print(f"| edit, first (inverts, then samples) | {first * 1e3:.1f} | "
          f"{calls['edit, first (inverts)']['inversion']} + {calls['edit, first (inverts)']['sampling']} | "
          f"{first / sega:.3f} × img2img with SEGA |  |")
    again = med["edit, again (cached)"]
    print(f"| edit, again (cached) | {again * 1e3:.1f} | "
          f"{calls['edit, again (cached)']['inversion']} + {calls['edit, again (cached)']['sampling']} | "
          f"{again / sega:.3f} × img2img with SEGA | ≤ 1.02: {'yes' if again / sega <= 1.02 else 'NO'} |")
    print()
    print(f"Memory per kept inversion (512², {STEPS} steps, 1 image, fp32 noises): {size / max(kept, 1) / 2**20:.2f} MiB "
          f"({size / max(kept, 1) / 1e6:.2f} MB).")


if __name__ == "__main__":
    main()
