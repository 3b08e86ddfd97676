"""SEGA's cost per step on reForge's path (sega_webui/reforge.py), in the reForge stand-in.

    python bench/reforge.py            # CPU, the tiny shape of bench/run.py, about a minute

reForge evaluates the prompt and the negative prompt as two cond lists of one batched call;
SEGA appends one list per concept to that call (forge-contract.md §1), so a SEGA step can
cost no less than one call of (2 + N)·B rows. Per step (Euler, median of --repeats runs,
interleaved):

- plain: a txt2img generation without SEGA;
- SEGA with N = 1, 2, 4 concepts (warm-up 0: every concept in every step);
- the bound: the plain generation with a CALC_COND_BATCH wrapper that only appends N copies
  of the prompt's list — the same rows in the same call, and nothing else;
- SEGA's own time inside its wrapper and post-CFG function, the model call taken out,
  against the step's model call at (2 + N)·B rows, as bench/run.py counts the arithmetic on
  A1111 (target ≤ 1 %), and against a plain step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import host_harness  # noqa: E402
import own_time  # noqa: E402
import reforge  # noqa: E402
from patcher_bench import PatcherBench, bound_table  # noqa: E402
from run import CONCEPTS, TINY  # noqa: E402


class ReforgeBench(PatcherBench):
    def __init__(self, shape, repeats: int):
        super().__init__(reforge, shape, repeats)

    def runs(self, n):
        values = host_harness.sega_values("\n".join(CONCEPTS[:n]), warmup="0")
        return [lambda: self.generate(), lambda: self.generate(values),
                lambda: self.generate(scripts=[ConceptLists(n)])]

    def own_time(self, n):
        """Seconds per step inside SEGA's wrapper and post-CFG function, the batched model
        call it wraps taken out."""
        with reforge.active():
            import sega_webui.reforge as path

            with own_time.timed(path.ReforgePatch) as spent:
                values = host_harness.sega_values("\n".join(CONCEPTS[:n]), warmup="0")
                self.generate(values)
                spent.update(ours=0.0, model=0.0, steps=0)
                self.generate(values)
        return own_time.per_step(spent)


class ConceptLists:
    """The bound's script: a CALC_COND_BATCH wrapper that appends N copies of the prompt's
    cond list to reForge's call, as SEGA's does, and changes nothing."""

    def __init__(self, n):
        self.n = n

    def process_before_every_sampling(self, p, *args, **kwargs):
        from ldm_patched.modules import patcher_extension as pe

        unet = p.sd_model.forge_objects.unet.clone()

        def wrapper(executor, model, conds, x_in, timestep, model_options):
            extra = [[dict(conds[0][0])] for _ in range(self.n)]
            return executor(model, [*conds, *extra], x_in, timestep, model_options)[: len(conds)]

        pe.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "bound", wrapper, unet.model_options,
                                is_model_options=True)
        p.sd_model.forge_objects.unet = unet


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("\n".join(bound_table(ReforgeBench(TINY, args.repeats), "reForge path", "its wrapper and post-CFG function")))


if __name__ == "__main__":
    main()
