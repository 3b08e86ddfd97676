"""Which sampler step a model call belongs to when the host hands the hooks no step index,
only the call's σ, the run's σ schedule and the sampler's per-step callback (ComfyUI:
comfy-contract.md §7). Host-free.

k-diffusion's samplers (ComfyUI's copy included) all call the model first at σ_i (or a σ
raised by churn) for step i, then report step i through the callback, then make the step's
further calls: at a σ between σ_i and σ_{i+1} (DPM2, DPM++ SDE, DPM++ 2S, SEEDS), at σ_i
again (SA-Solver's corrector) or at σ_{i+1}, σ_{i+2} (Heun, Heun++). So after c callbacks a
call is step c's first call when its σ is σ_c, and otherwise one of step c − 1's further
calls. Only a call at exactly σ_c is ambiguous, and only for the samplers that correct at
the next σ (Heun, DPM2 a and DPM++ 2S a at η = 1): there the first call after the callback
is the correction and a later one the next step's. DPM
fast and adaptive choose their own σs; their steps are counted by the callback alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# k-diffusion function names (ComfyUI's `KSAMPLER.sampler_function.__name__`).
# SEEDS-2 with r = 1 (exp_heun_2_x0) evaluates exactly at σ_{i+1} too, and so do DPM2 a and
# DPM++ 2S a at η = 1: their midpoint, halfway in log σ to σ_down = σ_{i+1}²/σ_i, is σ_{i+1}.
CORRECTS_AT_NEXT_SIGMA = frozenset({
    "sample_heun", "sample_heunpp2", "sample_exp_heun_2_x0", "sample_exp_heun_2_x0_sde", "sample_dpm_2_ancestral",
    "sample_dpm_2_ancestral_RF", "sample_dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral_RF",
    "sample_dpmpp_2s_ancestral_cfg_pp"})
OWN_SIGMAS = frozenset({"sample_dpm_fast", "sample_dpm_adaptive", "dpm_fast_function", "dpm_adaptive_function"})


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7)


class SigmaClock:
    """Maps each model call of one sampling run to its 0-based step."""

    def __init__(self, sigmas: Iterable[float], sampler_function: str = ""):
        self.sigmas = [float(s) for s in sigmas]
        self.steps = max(len(self.sigmas) - 1, 0)
        self.corrects_at_next = sampler_function in CORRECTS_AT_NEXT_SIGMA
        self.by_callback = sampler_function in OWN_SIGMAS
        self.completed = 0  # steps the callback reported
        self._since_callback = 0  # calls since the last callback

    def on_callback(self, index: int) -> None:
        done = int(index) + 1
        if done > self.completed:
            self.completed, self._since_callback = done, 0

    def step_for(self, sigma: float) -> int:
        last = max(self.steps - 1, 0)
        c = min(self.completed, last)
        first_since_callback = self._since_callback == 0
        self._since_callback += 1
        if self.by_callback or c == 0 or not self.sigmas:
            return c
        if _same(sigma, self.sigmas[c]):
            return c - 1 if self.corrects_at_next and first_since_callback and self.completed <= last else c
        return c - 1  # one of step c − 1's further calls
