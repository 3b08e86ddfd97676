"""SEGA's own time in a ComfyUI-style host (reForge, ComfyUI): inside its CALC_COND_BATCH
wrapper and post-CFG function, the batched model call it wraps taken out."""

from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timed(patch_class):
    """Time `patch_class`'s `calc_cond_batch` wrapper and `post_cfg` function while inside:
    the yielded dict sums "ours" (both functions, the model call included), "model" (the
    calls they hand on) and "steps" (post-CFG calls)."""
    real_wrap, real_post = patch_class.calc_cond_batch, patch_class.post_cfg
    spent = {"ours": 0.0, "model": 0.0, "steps": 0}

    def timed_wrap(self, executor, *args):
        def timed_executor(*a):
            t = time.perf_counter()
            try:
                return executor(*a)
            finally:
                spent["model"] += time.perf_counter() - t

        t = time.perf_counter()
        try:
            return real_wrap(self, timed_executor, *args)
        finally:
            spent["ours"] += time.perf_counter() - t

    def timed_post(self, args):
        t = time.perf_counter()
        try:
            return real_post(self, args)
        finally:
            spent["ours"] += time.perf_counter() - t
            spent["steps"] += 1

    patch_class.calc_cond_batch, patch_class.post_cfg = timed_wrap, timed_post
    try:
        yield spent
    finally:
        patch_class.calc_cond_batch, patch_class.post_cfg = real_wrap, real_post


def per_step(spent) -> tuple[float, float]:
    """(SEGA's own seconds, the wrapped model calls' seconds) per step."""
    return (spent["ours"] - spent["model"]) / spent["steps"], spent["model"] / spent["steps"]
