"""Edit-friendly inversion in the k-diffusion samplers' own update rule. Host-free.

A stochastic sampler's step is x_{i+1} = μ_i + g_i·z_i: a deterministic update μ_i from
x_i (and, for multistep samplers, the estimates of earlier steps), plus the noise z_i it
draws, times a gain g_i that depends only on the sigmas, eta and s_noise. Given the photo
x₀, pick a noisy latent for every sigma, x_i = x₀ + σ_i·n_i with independent n_i (Huberman-
Spiegelglas et al., "edit-friendly DDPM inversion"), and solve each step for its noise:
z_i = (x_{i+1} − μ_i) / g_i. Sampling again from x_0 with those noises lands on every x_i —
and at the end on x₀ plus the residual the last, noise-free step leaves, which is kept and
added back. A guidance term that changes the model's estimates then moves only what it
pulls on; everything else follows the photo's own trajectory.

`invert` makes the same model calls, in the same order, with the same inputs as the
sampler will make when nothing changes its estimates, so the host can run every per-call
mechanism (prompt schedules, CFG, inpainting blend, other extensions) exactly as in the
sampling pass. The step functions below restate k-diffusion's samplers (the versions
WebUI 1.10 runs: `sample_euler_ancestral`, `sample_dpm_2_ancestral`,
`sample_dpmpp_2s_ancestral`, `sample_dpmpp_sde`, `sample_dpmpp_2m_sde`,
`sample_dpmpp_3m_sde`) operation for operation, so that μ_i rounds as the sampler's does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# (x, sigma) -> the guided denoised estimate D(x, sigma), as the sampler's model returns it.
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class InversionError(ValueError):
    """The inversion cannot be made with these settings; the message says why."""


@dataclass
class Inversion:
    """What sampling needs to reproduce the photo: the noise the sampler's `noise_sampler`
    returns, call by call, and the residual to add to the sampler's result."""

    noises: tuple[torch.Tensor, ...]
    residual: torch.Tensor
    model_calls: int = 0
    # The latents it was made from (the host may keep them with it, see sega_webui/edit.py).
    kept: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        tensors = (*self.noises, self.residual, *(t for t in self.kept.values() if isinstance(t, torch.Tensor)))
        return sum(t.numel() * t.element_size() for t in tensors)

    def noise_sampler(self) -> NoiseReplay:
        return NoiseReplay(self.noises)


class NoiseReplay:
    """A k-diffusion `noise_sampler(sigma, sigma_next)` that hands out the inversion's
    noises in the order the sampler asks for them (the sampler is deterministic given its
    noises, so the order is the inversion's)."""

    def __init__(self, noises):
        self._noises = noises
        self.used = 0

    def __call__(self, sigma, sigma_next):
        if self.used >= len(self._noises):
            raise InversionError(
                f"the sampler asked for more noise than the inversion made ({len(self._noises)})"
            )
        z = self._noises[self.used]
        self.used += 1
        return z


@dataclass
class _Step:
    """One sampler step's inputs and the state multistep samplers carry along."""

    x: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    denoise: Denoise
    first_call_done: Callable[[], None]
    draw: Callable[[], torch.Tensor]
    eta: float
    s_noise: float
    options: dict
    history: dict = field(default_factory=dict)


@dataclass
class _Update:
    mu: torch.Tensor  # the deterministic part of the step (the result, at the last step)
    # What the sampler multiplies the step's last noise with, factor by factor in its own
    # order (`x + noise * s_noise * sigma_up` is ((noise·s_noise)·sigma_up)), so that the
    # inversion can add the noise exactly as the sampler will.
    factors: tuple = ()
    mid_noises: tuple = ()  # noise the sampler draws between its evaluations (DPM++ SDE)

    def gain(self):
        g = 1.0
        for f in self.factors:
            g = g * f
        return g

    def add_noise(self, z: torch.Tensor) -> torch.Tensor:
        for f in self.factors:
            z = z * f
        return self.mu + z


def ancestral_step(sigma_from, sigma_to, eta):
    """k-diffusion's `get_ancestral_step`: the sigma to step down to and the noise to add."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    down = (sigma_to**2 - up**2) ** 0.5
    return down, up


def _sigma_of(t):
    return t.neg().exp()


def _t_of(sigma):
    return sigma.log().neg()


def _euler_ancestral(c: _Step) -> _Update:
    denoised = c.denoise(c.x, c.sigma)
    c.first_call_done()
    down, up = ancestral_step(c.sigma, c.sigma_next, c.eta)
    d = (c.x - denoised) / c.sigma
    return _Update(c.x + d * (down - c.sigma), (c.s_noise, up))


def _dpm_2(c: _Step, denoised: torch.Tensor, down) -> tuple[torch.Tensor, bool]:
    """DPM-Solver-2's step from x to `down` (an Euler step, with no noise after it, where
    `down` is 0), and whether the sampler adds noise after it."""
    d = (c.x - denoised) / c.sigma
    if down == 0:
        return c.x + d * (down - c.sigma), False
    mid = c.sigma.log().lerp(down.log(), 0.5).exp()
    x_2 = c.x + d * (mid - c.sigma)
    d_2 = (x_2 - c.denoise(x_2, mid)) / mid
    return c.x + d_2 * (down - c.sigma), True


def _dpm_2_ancestral(c: _Step) -> _Update:
    denoised = c.denoise(c.x, c.sigma)
    c.first_call_done()
    down, up = ancestral_step(c.sigma, c.sigma_next, c.eta)
    x, noisy = _dpm_2(c, denoised, down)
    return _Update(x, (c.s_noise, up)) if noisy else _Update(x)


def _dpmpp_2s_ancestral(c: _Step) -> _Update:
    denoised = c.denoise(c.x, c.sigma)
    c.first_call_done()
    down, up = ancestral_step(c.sigma, c.sigma_next, c.eta)
    if down == 0:
        d = (c.x - denoised) / c.sigma
        return _Update(c.x + d * (down - c.sigma))
    t, t_next = _t_of(c.sigma), _t_of(down)
    h = t_next - t
    s = t + 0.5 * h
    x_2 = (_sigma_of(s) / _sigma_of(t)) * c.x - (-h * 0.5).expm1() * denoised
    denoised_2 = c.denoise(x_2, _sigma_of(s))
    return _Update((_sigma_of(t_next) / _sigma_of(t)) * c.x - (-h).expm1() * denoised_2, (c.s_noise, up))


def _dpmpp_sde(c: _Step) -> _Update:
    denoised = c.denoise(c.x, c.sigma)
    c.first_call_done()
    if c.sigma_next == 0:
        d = (c.x - denoised) / c.sigma
        return _Update(c.x + d * (c.sigma_next - c.sigma))
    r = c.options.get("r", 0.5)
    t, t_next = _t_of(c.sigma), _t_of(c.sigma_next)
    h = t_next - t
    s = t + h * r
    fac = 1 / (2 * r)
    sd, su = ancestral_step(_sigma_of(t), _sigma_of(s), c.eta)
    s_ = _t_of(sd)
    x_2 = (_sigma_of(s_) / _sigma_of(t)) * c.x - (t - s_).expm1() * denoised
    # The noise in the middle of the step is free: any fixed draw, replayed as it was.
    mid = c.draw()
    x_2 = x_2 + mid * c.s_noise * su
    denoised_2 = c.denoise(x_2, _sigma_of(s))
    sd, su = ancestral_step(_sigma_of(t), _sigma_of(t_next), c.eta)
    t_next_ = _t_of(sd)
    denoised_d = (1 - fac) * denoised + fac * denoised_2
    mu = (_sigma_of(t_next_) / _sigma_of(t)) * c.x - (t - t_next_).expm1() * denoised_d
    return _Update(mu, (c.s_noise, su), (mid,))


def _dpmpp_2m_sde(c: _Step) -> _Update:
    denoised = c.denoise(c.x, c.sigma)
    c.first_call_done()
    hist = c.history
    old, h_last = hist.get("old"), hist.get("h_last")
    if c.sigma_next == 0:
        update = _Update(denoised)
        h = hist.get("h")
    else:
        t, s = -c.sigma.log(), -c.sigma_next.log()
        h = s - t
        eta_h = c.eta * h
        mu = c.sigma_next / c.sigma * (-eta_h).exp() * c.x + (-h - eta_h).expm1().neg() * denoised
        if old is not None:
            r = h_last / h
            if c.options.get("solver_type", "midpoint") == "heun":
                mu = mu + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old)
            else:
                mu = mu + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old)
        update = _Update(mu, (c.sigma_next, (-2 * eta_h).expm1().neg().sqrt(), c.s_noise))
    hist.update(old=denoised, h_last=h, h=h)
    return update


def _dpmpp_3m_sde(c: _Step) -> _Update:
    denoised = c.denoise(c.x, c.sigma)
    c.first_call_done()
    hist = c.history
    d_1, d_2 = hist.get("d_1"), hist.get("d_2")
    h_1, h_2 = hist.get("h_1"), hist.get("h_2")
    h = hist.get("h")
    if c.sigma_next == 0:
        update = _Update(denoised)
    else:
        t, s = -c.sigma.log(), -c.sigma_next.log()
        h = s - t
        h_eta = h * (c.eta + 1)
        mu = torch.exp(-h_eta) * c.x + (-h_eta).expm1().neg() * denoised
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            phi_3 = phi_2 / h_eta - 0.5
            mu = mu + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None:
            d = (denoised - d_1) / (h_1 / h)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            mu = mu + phi_2 * d
        update = _Update(mu, (c.sigma_next, (-2 * h * c.eta).expm1().neg().sqrt(), c.s_noise))
    hist.update(d_1=denoised, d_2=d_1, h_1=h, h_2=h_1, h=h)
    return update


def _rf_step(sigma, sigma_next, eta):
    """Forge's ancestral steps on a rectified-flow model (Flux): the sigma to step down to,
    x's rescaling to the next sigma's signal level and the noise to add — written as
    k_diffusion/sampling.py's `sample_euler_ancestral_RF` computes them."""
    downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
    sigma_down = sigma_next * downstep_ratio
    alpha_ip1 = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise_coeff = (sigma_next**2 - sigma_down**2 * alpha_ip1**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_ip1 / alpha_down, renoise_coeff


def _euler_ancestral_rf(c: _Step) -> _Update:
    denoised = c.denoise(c.x, c.sigma)
    c.first_call_done()
    if c.sigma_next == 0:
        return _Update(denoised)
    down, rescale, renoise = _rf_step(c.sigma, c.sigma_next, c.eta)
    ratio = down / c.sigma
    return _Update(rescale * (ratio * c.x + (1 - ratio) * denoised), (c.s_noise, renoise))


def _dpm_2_ancestral_rf(c: _Step) -> _Update:
    denoised = c.denoise(c.x, c.sigma)
    c.first_call_done()
    down, rescale, renoise = _rf_step(c.sigma, c.sigma_next, c.eta)
    x, noisy = _dpm_2(c, denoised, down)
    return _Update(rescale * x, (c.s_noise, renoise)) if noisy else _Update(x)


# Forge runs these instead of the named functions when the model is Flux (k_diffusion/sampling.py
# dispatches on the predictor being PredictionFlux).
RECTIFIED_FLOW = {
    "sample_euler_ancestral": _euler_ancestral_rf,
    "sample_dpm_2_ancestral": _dpm_2_ancestral_rf,
}

# k-diffusion function name -> (step, the WebUI's sampler names)
SAMPLERS: dict[str, tuple[Callable[[_Step], _Update], tuple[str, ...]]] = {
    "sample_euler_ancestral": (_euler_ancestral, ("Euler a",)),
    "sample_dpm_2_ancestral": (_dpm_2_ancestral, ("DPM2 a",)),
    "sample_dpmpp_2s_ancestral": (_dpmpp_2s_ancestral, ("DPM++ 2S a",)),
    "sample_dpmpp_sde": (_dpmpp_sde, ("DPM++ SDE",)),
    "sample_dpmpp_2m_sde": (_dpmpp_2m_sde, ("DPM++ 2M SDE", "DPM++ 2M SDE Heun")),
    "sample_dpmpp_3m_sde": (_dpmpp_3m_sde, ("DPM++ 3M SDE",)),
}


def sampler_names() -> list[str]:
    """The WebUI's names of the samplers an edit can use, for messages."""
    return [name for _, names in SAMPLERS.values() for name in names]


def check(funcname: str, eta: float, s_noise: float) -> None:
    """Raise InversionError when this sampler, with these settings, injects no noise that
    could carry the photo."""
    if funcname not in SAMPLERS:
        raise InversionError(
            "inversion needs a sampler that adds noise at every step: " + ", ".join(sampler_names())
        )
    if not eta:
        raise InversionError("inversion needs noise at every step, and eta is 0 (Settings → Sampler parameters)")
    if not s_noise:
        raise InversionError("inversion needs noise at every step, and the noise multiplier (s_noise) is 0")


def invert(
    funcname: str,
    denoise: Denoise,
    x_start: torch.Tensor,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    draw: Callable[[], torch.Tensor],
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    options: dict | None = None,
    on_step: Callable[[int, int], None] | None = None,
    add_noise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    rectified_flow: bool = False,
) -> Inversion:
    """The noises with which the sampler `funcname` over `sigmas` (descending, last 0),
    started at `x_start` (x₀ + σ_0·noise), passes through x₀ + σ_i·n_i at every sigma.

    `draw()` returns a new standard-normal tensor shaped like x₀ each call (seeded by the
    caller: the draws decide the edit). `on_step(i, phase)` is told when step i starts
    (phase 0) and when its first model call is done (phase 1), as the sampler's callback
    would be. `options`: the sampler's own options (`solver_type`, `r`). `add_noise(x₀, n, σ)`:
    the model's noisy latent at σ, x₀ + σ·n unless given (a flow model's is (1 − σ)·x₀ + σ·n);
    the step formulas hold for any trajectory, only its points change. `rectified_flow`: the
    host runs its rectified-flow variant of this sampler where it has one (`RECTIFIED_FLOW`).
    """
    check(funcname, eta, s_noise)
    step_fn = _step_function(funcname, rectified_flow)
    if len(sigmas) < 2:
        raise InversionError("there are no steps to invert")
    calls = 0

    def counted(x, sigma):
        nonlocal calls
        calls += 1
        return denoise(x, sigma)

    noises: list[torch.Tensor] = []

    def through_the_photo(i: int, update: _Update) -> torch.Tensor:
        n_next = draw()
        target = x0 + sigmas[i + 1] * n_next if add_noise is None else add_noise(x0, n_next, sigmas[i + 1])
        z = (target - update.mu) / update.gain()
        noises.extend(update.mid_noises)
        noises.append(z)
        # Go on from where the sampler will be — the target up to the rounding of its
        # own `μ + z·…` — not from the target itself: then sampling with nothing acting
        # makes these very model calls again, and rounding cannot build up over the
        # steps (diffusers' LEDITS++ carries its recomputed x_{t−1} on for this reason).
        return update.add_noise(z)

    final = _walk(step_fn, counted, x_start, sigmas, draw, eta, s_noise, options, on_step, through_the_photo)
    return Inversion(tuple(noises), x0 - final, calls)


def replay(
    funcname: str,
    denoise: Denoise,
    x_start: torch.Tensor,
    sigmas: torch.Tensor,
    inversion: Inversion,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    options: dict | None = None,
    on_step: Callable[[int, int], None] | None = None,
    rectified_flow: bool = False,
) -> torch.Tensor:
    """Sample with the inversion's noises, for a host whose own sampler cannot be handed
    them (ComfyUI's sampler nodes): the steps `invert` retraces, each step's noises as the
    inversion recorded them (mid-step ones first), and its residual added to the last
    step's result. With nothing changing the model's estimates this makes the inversion's
    model calls again, with the same inputs, and ends on x₀. `on_step` as for `invert`."""
    recorded = NoiseReplay(inversion.noises)

    def draw():
        return recorded(None, None)

    final = _walk(_step_function(funcname, rectified_flow), denoise, x_start, sigmas, draw, eta, s_noise, options,
                  on_step, lambda i, update: update.add_noise(draw()))
    return final + inversion.residual


def _step_function(funcname: str, rectified_flow: bool):
    step_fn, _ = SAMPLERS[funcname]
    return RECTIFIED_FLOW.get(funcname, step_fn) if rectified_flow else step_fn


def _walk(step_fn, denoise, x, sigmas, draw, eta, s_noise, options, on_step, advance) -> torch.Tensor:
    """The sampler's steps from `x`: `advance(i, update)` is the x after step i's noise; the
    last step (to σ = 0) adds none, and its result is returned."""
    history: dict = {}
    for i in range(len(sigmas) - 1):
        if on_step is not None:
            on_step(i, 0)
        step = _Step(
            x, sigmas[i], sigmas[i + 1], denoise,
            (lambda i=i: on_step(i, 1)) if on_step is not None else (lambda: None),
            draw, eta, s_noise, options or {}, history,
        )
        update = step_fn(step)
        if sigmas[i + 1] > 0:
            x = advance(i, update)
        else:
            return update.mu
    raise InversionError("the schedule does not end at sigma 0")
