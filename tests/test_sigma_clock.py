"""sega/sigma_clock.py on the real k-diffusion samplers (the order of model calls and step
callbacks ComfyUI's copy keeps): each call's step, from its σ and the callbacks alone."""

import pytest
import torch
import webui

from sega.sigma_clock import SigmaClock

webui._load_k_diffusion()
import k_diffusion.sampling as kd  # noqa: E402

N = 6
ONE = list(range(N))
TWO = [s for s in range(N - 1) for _ in (0, 1)] + [N - 1]  # two calls a step, one in the last (σ → 0)


@pytest.mark.parametrize("name, expected", [
    ("euler", ONE), ("euler_ancestral", ONE), ("dpmpp_2m", ONE), ("dpmpp_2m_sde", ONE), ("lms", ONE),
    ("heun", TWO), ("dpm_2", TWO), ("dpm_2_ancestral", TWO), ("dpmpp_sde", TWO), ("dpmpp_2s_ancestral", TWO),
])
def test_every_call_gets_its_samplers_step(name, expected):
    seen, clock = run_clock(name)
    assert seen == expected
    assert clock.steps == N


def run_clock(name, **options):
    """The step the clock gives each model call of the real sampler `name`, and the clock."""
    sigmas = kd.get_sigmas_karras(N, 0.03, 14.6)
    function = getattr(kd, f"sample_{name}")
    clock = SigmaClock(sigmas.tolist(), function.__name__)
    seen = []

    def model(x, sigma, **kwargs):
        seen.append(clock.step_for(float(sigma[0])))
        return x * 0.9

    torch.manual_seed(0)
    function(model, torch.randn(1, 4, 4, 4) * 14.6, sigmas, callback=lambda info: clock.on_callback(info["i"]),
             disable=True, **options)
    return seen, clock


@pytest.mark.parametrize("name", ["dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_an_ancestral_midpoint_off_the_next_sigma_still_counts_right(name):
    assert run_clock(name, eta=0.5)[0] == TWO


def test_a_sampler_that_picks_its_own_sigmas_is_counted_by_its_callbacks():
    clock = SigmaClock([14.6, 5.0, 1.0, 0.0], "dpm_fast_function")
    assert clock.step_for(9.3) == 0
    clock.on_callback(0)
    assert clock.step_for(2.2) == 1 and clock.step_for(1.7) == 1
