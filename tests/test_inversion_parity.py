"""The inversion's formulas against independent computations:

- diffusers' LEDITS++ noise maps (`compute_noise_ddim`, `compute_noise_sde_dpm_pp_2nd` from
  `pipelines/ledits_pp`) on the same trajectory and estimates: Euler a with eta 1 is DDIM
  with eta 1 (the DDPM posterior) written in the variance-exploding form the WebUI's samplers
  use, and DPM++ 2M SDE is diffusers' second-order SDE-DPM-Solver++; the noises must agree;
- k-diffusion's own sampler functions: replaying the noises through them passes through
  every latent of the trajectory and ends on the photo.
"""

from __future__ import annotations

import pytest
import torch
import webui

from sega.inversion import SAMPLERS, invert

webui._load_k_diffusion()
import k_diffusion.sampling as ks  # noqa: E402

ledits = pytest.importorskip("diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion")
N = 10


def toy_model(seed=0):
    """A deterministic, nonlinear denoiser D(x, σ) = x − σ·ε(x, σ)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.5

    def eps(x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return torch.tanh(torch.einsum("ij,bjhw->bihw", w, x) / (1 + s)) + 0.1 * x / (1 + s)

    def denoise(x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return x - s * eps(x, sigma)

    return eps, denoise


def recorded_inversion(funcname, sigmas, x0, denoise, seed=3, **kw):
    """The inversion and the trajectory it aimed at (x_i = x₀ + σ_i·n_i)."""
    g = torch.Generator().manual_seed(seed)
    draws = []

    def draw():
        draws.append(torch.randn(x0.shape, generator=g, dtype=x0.dtype))
        return draws[-1]

    x_start = x0 + sigmas[0] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=x0.dtype)
    inv = invert(funcname, denoise, x_start, x0, sigmas, draw, **kw)
    return inv, x_start, draws


def photo():
    return torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def scaled_linear(cls, **config):
    return cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **config)


def test_euler_ancestral_noises_equal_ledits_ddim_noise_maps():
    from diffusers import DDIMScheduler

    sched = scaled_linear(DDIMScheduler, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(N)
    ts = sched.timesteps
    acp = sched.alphas_cumprod.to(torch.float64)
    sigmas = torch.cat([((1 - acp[ts]) / acp[ts]).sqrt(), torch.zeros(1, dtype=torch.float64)])
    eps, denoise = toy_model()
    x0 = photo()
    inv, x_start, draws = recorded_inversion("sample_euler_ancestral", sigmas, x0, denoise)
    xs = [x_start] + [x0 + sigmas[i + 1] * draws[i] for i in range(N - 1)]
    assert len(inv.noises) == N - 1
    for i in range(N - 1):
        t = int(ts[i])
        latents = acp[t].sqrt() * xs[i]
        prev = acp[int(ts[i + 1])].sqrt() * xs[i + 1]
        reference, _ = ledits.compute_noise_ddim(sched, prev, latents, t, eps(xs[i], sigmas[i]), 1.0)
        torch.testing.assert_close(inv.noises[i], reference.to(torch.float64), rtol=1e-4, atol=1e-4)
        assert reference.abs().mean() > 0.3  # real noise, not a degenerate zero


def test_dpmpp_2m_sde_noises_equal_ledits_sde_dpm_solver_noise_maps():
    from diffusers import DPMSolverMultistepScheduler

    sched = scaled_linear(DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++", solver_order=2,
                          final_sigmas_type="zero")
    sched.set_timesteps(N)
    sigmas = sched.sigmas.to(torch.float64)
    assert sigmas[-1] == 0 and len(sigmas) == N + 1
    eps, denoise = toy_model(seed=4)
    x0 = photo()
    inv, x_start, draws = recorded_inversion("sample_dpmpp_2m_sde", sigmas, x0, denoise)
    xs = [x_start] + [x0 + sigmas[i + 1] * draws[i] for i in range(N - 1)]

    def vp(i):  # variance-preserving latents of the same point
        return xs[i] / (sigmas[i] ** 2 + 1).sqrt()

    for i in range(N - 1):
        reference, _ = ledits.compute_noise_sde_dpm_pp_2nd(sched, vp(i + 1), vp(i), sched.timesteps[i],
                                                           eps(xs[i], sigmas[i]), 1.0)
        torch.testing.assert_close(inv.noises[i], reference.to(torch.float64), rtol=1e-4, atol=1e-4)
    assert sched.lower_order_nums == 2  # the second-order (multistep) update was compared too


@pytest.mark.parametrize("funcname", list(SAMPLERS))
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.6, 0.9)])
def test_k_diffusions_own_samplers_replay_the_trajectory_and_end_on_the_photo(funcname, eta, s_noise):
    sigmas = ks.get_sigmas_karras(N, 0.03, 14.6, device="cpu").to(torch.float64)[3:]
    _, denoise = toy_model(seed=2)
    x0 = photo()
    kw = dict(eta=eta, s_noise=s_noise)
    options = {"solver_type": "heun"} if funcname == "sample_dpmpp_2m_sde" and eta != 1.0 else {}
    inv, x_start, draws = recorded_inversion(funcname, sigmas, x0, denoise, options=options, **kw)
    mids = 1 if funcname == "sample_dpmpp_sde" else 0
    targets = [x0 + sigmas[i + 1] * draws[i * (1 + mids) + mids] for i in range(len(sigmas) - 2)]
    seen = []

    def model(x, sigma, **_):
        return denoise(x, sigma)

    out = getattr(ks, funcname)(model, x_start, sigmas, disable=True, noise_sampler=inv.noise_sampler(),
                                callback=lambda d: seen.append(d["x"]), **options, **kw)
    # the sampler starts every step on the trajectory …
    for i, target in enumerate(targets, start=1):
        torch.testing.assert_close(seen[i], target, rtol=0, atol=1e-9)
    # … and, with the residual of its last step, ends on the photo
    torch.testing.assert_close(out + inv.residual, x0, rtol=0, atol=1e-9)
    assert (out - x0).abs().max() > 1e-3  # the residual carried something
    free = getattr(ks, funcname)(model, x_start, sigmas, disable=True, **options, **kw)
    assert (free - x0).abs().max() > 0.1  # fresh noise does not reconstruct
