"""Which sampler step a model call belongs to, and how many steps a pass really runs.

The WebUI's `params.sampling_step` lags by one and second-order samplers call the model
twice per step, and k-diffusion calls its step callback between those two calls, so
neither the callback nor the call count alone says which step a call is in. Each sampler
family has its own rule.
"""

from __future__ import annotations

from dataclasses import dataclass

# Samplers whose step count we learn only from their per-step callback.
CALLBACK_COUNTED = frozenset({"DPM fast", "DPM adaptive"})
# Timestep samplers that loop over len(timesteps) - 1 steps (UniPC runs len(timesteps)).
TIMESTEP_LOOPS_MINUS_ONE = frozenset({"DDIM", "DDIM CFG++", "PLMS"})


@dataclass
class StepClock:
    """Maps the k-th model call of a pass to its 0-based sampler step."""

    sampler_name: str
    second_order: bool = False
    callbacks_seen: int = 0  # completed-step callbacks so far

    def step_for_call(self, call: int) -> int:
        if self.sampler_name in CALLBACK_COUNTED:
            return self.callbacks_seen
        if self.sampler_name == "PLMS":
            return max(0, call - 1)  # PLMS calls the model twice in its first step
        if self.second_order:
            return call // 2  # two calls per step; only the last step has one
        return call

    def on_step_callback(self, completed_index: int) -> None:
        self.callbacks_seen = max(self.callbacks_seen, int(completed_index) + 1)


def real_steps(sampler_name: str, kwargs: dict, fallback: int) -> int:
    """Steps the sampler function will run, from the arguments it is launched with."""
    sigmas = kwargs.get("sigmas")
    if sigmas is not None:
        return max(len(sigmas) - 1, 0)
    timesteps = kwargs.get("timesteps")
    if timesteps is not None:
        n = len(timesteps)
        return max(n - 1, 0) if sampler_name in TIMESTEP_LOOPS_MINUS_ONE else n
    n = kwargs.get("n")
    if isinstance(n, int):
        return n
    return fallback



# The sampler functions whose family has its own counting rule, by function name: other
# extensions may register a sampler under a new name (Dynamic Thresholding's
# "Euler_dynthres1") whose function is still the original.
_FAMILY_BY_FUNCTION = {
    "sample_dpm_fast": "DPM fast",
    "sample_dpm_adaptive": "DPM adaptive",
    "ddim": "DDIM",
    "ddim_cfgpp": "DDIM CFG++",
    "plms": "PLMS",
}


def sampler_family(name: str, sampler) -> str:
    """The name our counting rules know the sampler by."""
    func = getattr(sampler, "funcname", None)
    func = getattr(func, "__name__", func)
    return _FAMILY_BY_FUNCTION.get(func, name) if isinstance(func, str) else name
