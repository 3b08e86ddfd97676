"""sega/spaces.py: the noise estimate and the way back, per kind of model output."""

from __future__ import annotations

import torch

from sega import spaces


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, x0_u = torch.randn(2, 16, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 16, 4, 4, generator=g,
                                                                                     dtype=torch.float64)
    x0_c = torch.randn(3, 2, 16, 4, 4, generator=g, dtype=torch.float64)
    return x, x0_u, x0_c


def test_flow_differences_are_the_eps_differences():
    x, x0_u, x0_c = _case()
    sigma = torch.tensor([0.3, 0.9], dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1)
    eps_u, eps_c = spaces.noise_estimates(spaces.FLOW, x, sigma, x0_u, x0_c)
    naive = lambda x0: (x - (1 - s) * x0) / s  # noqa: E731
    torch.testing.assert_close(eps_c - eps_u, naive(x0_c) - naive(x0_u))


def test_flow_term_is_the_eps_term_seen_in_x0():
    x, x0_u, _ = _case(1)
    sigma = torch.tensor([0.3, 0.9], dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1)
    gamma = torch.randn_like(x)
    eps = (x - (1 - s) * x0_u) / s
    x0_from_guided_eps = (x - s * (eps + gamma)) / (1 - s)
    torch.testing.assert_close(spaces.add_term(spaces.FLOW, x0_u, gamma, sigma), x0_from_guided_eps)


def test_flow_at_sigma_one_adds_nothing_and_stays_finite():
    x, x0_u, x0_c = _case(2)
    sigma = torch.tensor([1.0, 0.5], dtype=torch.float64)
    _, eps_c = spaces.noise_estimates(spaces.FLOW, x, sigma, x0_u, x0_c)
    assert torch.count_nonzero(eps_c[:, 0]) == 0 and torch.count_nonzero(eps_c[:, 1]) > 0
    out = spaces.add_term(spaces.FLOW, x0_u, torch.ones_like(x), sigma)
    assert torch.equal(out[0], x0_u[0]) and torch.isfinite(out).all() and not torch.equal(out[1], x0_u[1])


def test_denoised_matches_the_diffusion_formula():
    x, x0_u, x0_c = _case(3)
    sigma = torch.tensor([14.0, 0.1], dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1)
    eps_u, eps_c = spaces.noise_estimates(spaces.DENOISED, x, sigma, x0_u, x0_c)
    assert torch.equal(eps_u, (x - x0_u) / s) and torch.equal(eps_c, (x - x0_c) / s)
    gamma = torch.randn_like(x)
    assert torch.equal(spaces.add_term(spaces.DENOISED, x0_u, gamma, sigma), x0_u - s * gamma)
    assert torch.equal(spaces.add_term(spaces.EPS, x0_u, gamma, sigma), x0_u + gamma)
