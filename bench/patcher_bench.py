"""What bench/forge.py and bench/reforge.py share: a generation in a stand-in timed per
sampler step, interleaved medians, and the table of SEGA against its row bound."""

from __future__ import annotations

import statistics
import time

import host_harness
import torch
from run import build_model


class PatcherBench:
    """Per-step times in one stand-in (`harness`: tests/forge.py or tests/reforge.py)."""

    cfg_scale = 7.0

    def __init__(self, harness, shape, repeats: int, model: bool = True):
        self.harness, self.shape, self.repeats = harness, shape, repeats
        if model:
            host_harness._models[shape.kind] = build_model(shape, torch.device("cpu"), torch.float32)
        self.host = harness.Host()

    def generate(self, values=None, scripts=()):
        """Seconds per step of one txt2img generation (first to last step: no set-up)."""
        s = self.shape
        stamps = []
        with self.harness.active() as w:
            callbacks = w.script_callbacks.callbacks["cfg_denoiser"]
            stamp = lambda params: stamps.append(time.perf_counter())  # noqa: E731
            callbacks.append(stamp)
            try:
                self.host.extra_scripts = list(scripts)
                self.host.generate(values, kind=s.kind, sampler_name="Euler", steps=s.steps, batch_size=s.batch,
                                   width=s.latent * 8, height=s.latent * 8, cfg_scale=self.cfg_scale)
            finally:
                callbacks.remove(stamp)
                self.host.extra_scripts = []
        assert self.host.reported == [], self.host.reported[0]
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    def median_of(self, runs):
        """The median of each run over the repeats, the runs interleaved (after one warm-up)."""
        for run in runs:
            run()
        times = [[] for _ in runs]
        for _ in range(self.repeats):
            for i, run in enumerate(runs):
                times[i].append(run())
        return [statistics.median(t) for t in times]


def bound_table(bench, title: str, own_label: str) -> list[str]:
    """SEGA with 1, 2, 4 concepts against its row bound (`bench.runs(n)` → plain, SEGA,
    bound), and SEGA's own time at 4 concepts (`bench.own_time(4)` → its own seconds, the
    step's model calls' seconds)."""
    s = bench.shape
    lines = [f"### {title} — {s.name}, {s.steps} steps (Euler), batch {s.batch}, CPU float32, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             "| run | per step (ms) | ÷ plain | bound ÷ plain | ÷ bound | target |", "|---|---|---|---|---|---|"]
    for n in (1, 2, 4):
        plain, sega, bound = bench.median_of(bench.runs(n))
        ok = sega <= 1.05 * bound
        lines.append(f"| SEGA, {n} concept{'s' if n > 1 else ''} | {sega * 1e3:.2f} | {sega / plain:.3f} | "
                     f"{bound / plain:.3f} | {sega / bound:.3f} | ≤ 1.05× bound: {'yes' if ok else 'NO'} |")
    plain = bench.median_of([lambda: bench.generate()])[0]
    own, calls = bench.own_time(4)
    lines += ["", f"SEGA's own time in {own_label}, 4 concepts (its model call taken out; the guidance "
              f"arithmetic, the concepts' conds): {own * 1e3:.3f} ms per step = {100 * own / calls:.2f} % of "
              f"the step's model calls at 6·B rows ({calls * 1e3:.2f} ms, as bench/run.py counts it on A1111; "
              f"target ≤ 1 %), {100 * own / plain:.2f} % of a plain step ({plain * 1e3:.2f} ms)."]
    return lines
