"""modules/sd_samplers_timesteps.py: DDIM, PLMS and UniPC, whose denoiser returns ε."""

import inspect
import math

import numpy as np
import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared


def _ddim_update(model, timesteps):
    """update(x, eps, k) → (x at timestep k - 1, predicted x0), deterministic DDIM."""
    acp = model.inner_model.inner_model.alphas_cumprod
    a = acp[timesteps]
    a_prev = acp[torch.nn.functional.pad(timesteps[:-1], (1, 0))].double()

    def update(x, eps, k):
        at, ap = a[k].item(), a_prev[k].item()
        x0 = (x - (1 - at) ** 0.5 * eps) / at ** 0.5
        return ap ** 0.5 * x0 + (1 - ap) ** 0.5 * eps, x0

    return update


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None):
    """Deterministic DDIM over `timesteps` (ascending), len(timesteps) - 1 steps."""
    update = _ddim_update(model, timesteps)
    ones = x.new_ones(x.shape[0])
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        eps = model(x, timesteps[k].item() * ones, **extra_args)
        x, x0 = update(x, eps, k)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


@torch.no_grad()
def plms(model, x, timesteps, extra_args=None, callback=None, disable=None):
    """PLMS: a pseudo improved-Euler first step (two model calls), then Adams–Bashforth."""
    update = _ddim_update(model, timesteps)
    ones = x.new_ones(x.shape[0])
    history = []
    coefficients = {1: [1.5, -0.5], 2: [23 / 12, -16 / 12, 5 / 12], 3: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        eps = model(x, timesteps[k].item() * ones, **extra_args)
        if not history:
            x_next, _ = update(x, eps, k)
            eps_next = model(x_next, timesteps[max(k - 1, 0)].item() * ones, **extra_args)
            eps_prime = (eps + eps_next) / 2
        else:
            c = coefficients[min(len(history), 3)]
            eps_prime = c[0] * eps + sum(ci * e for ci, e in zip(c[1:], reversed(history[-3:]), strict=False))
        x, x0 = update(x, eps_prime, k)
        history.append(eps)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


def _unipc_schedule(acp):
    """The discrete VP schedule as continuous time t ∈ (0, 1]: log α(t) interpolated over
    t = (i + 1) / 1000, with σ(t) = √(1 − α²) and λ(t) = log(α / σ)."""
    t_grid = torch.linspace(0.0, 1.0, len(acp) + 1, dtype=torch.float64)[1:]
    log_alpha = 0.5 * torch.log(acp.double())

    def coefficients(t):
        la = torch.tensor(np.interp(t, t_grid.numpy(), log_alpha.numpy()), dtype=torch.float64)
        alpha = torch.exp(la)
        sigma = torch.sqrt(1 - alpha ** 2)
        return alpha.item(), sigma.item(), (la - torch.log(sigma)).item()

    return coefficients


@torch.no_grad()
def unipc(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=False):
    """UniPC in data-prediction form, first-order predictor and corrector (variant bh1), with
    the call pattern of the WebUI's multistep UniPC: `len(timesteps)` steps over a uniform
    time grid, one model call per step at the time point the step starts from (the
    corrector's call at point k is also step k's start), none at the end; the step callback
    comes after each step's corrector call, with i counting from 0."""
    extra_args = extra_args or {}
    acp = model.inner_model.inner_model.alphas_cumprod
    coefficients = _unipc_schedule(acp)
    n = len(timesteps)
    total = len(acp)
    t_start = timesteps[-1].item() / total + 1 / total if is_img2img else 1.0
    times = torch.linspace(t_start, 1 / total, n + 1, dtype=torch.float64).tolist()
    ones = x.new_ones(x.shape[0])

    def evaluate(x, i):  # data prediction at time point i (the start of step i)
        alpha, sigma, _ = coefficients(times[i])
        eps = model(x, (times[i] - 1 / total) * total * ones, **extra_args)
        return (x - sigma * eps) / alpha

    x0_prev = evaluate(x, 0)
    for k in range(1, n + 1):
        _, sigma_s, lambda_s = coefficients(times[k - 1])
        alpha_t, sigma_t, lambda_t = coefficients(times[k])
        hh = -(lambda_t - lambda_s)
        predicted = sigma_t / sigma_s * x - alpha_t * math.expm1(hh) * x0_prev
        if k < n:
            x0 = evaluate(predicted, k)
            x = predicted - alpha_t * hh * 0.5 * (x0 - x0_prev)
            x0_prev = x0
        else:
            x = predicted
        if callback is not None:
            callback({"x": x, "i": k - 1, "sigma": 0, "sigma_hat": 0, "denoised": x0_prev})
    return x


samplers_timesteps = [("DDIM", ddim, {}), ("PLMS", plms, {}), ("UniPC", unipc, {})]


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CompVisTimestepsVDenoiser(CompVisTimestepsDenoiser):
    def forward(self, input, timesteps, **kwargs):
        v = self.inner_model.apply_model(input, timesteps, **kwargs)
        acp = self.inner_model.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1).to(input.dtype)
        return acp.sqrt() * v + (1 - acp).sqrt() * input


class CFGDenoiserTimesteps(sd_samplers_cfg_denoiser.CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    @property
    def inner_model(self):
        if self.model_wrap is None:
            cls = CompVisTimestepsVDenoiser if shared.sd_model.parameterization == "v" else CompVisTimestepsDenoiser
            self.model_wrap = cls(shared.sd_model)
        return self.model_wrap


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps)), device=shared.device) + 1, 0, 999)

    def _extra_args(self, p, c, uc, image_conditioning):
        self.sampler_extra_args = {"cond": c, "image_cond": image_conditioning, "uncond": uc,
                                   "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        self.initialize(p)
        self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        self.last_latent = x
        return self.launch_sampling(
            steps,
            lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=True,
                              callback=self.callback_state, timesteps=timesteps),
        )

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        sched = timesteps[:t_enc]
        acp = shared.sd_model.alphas_cumprod
        xi = x * acp[timesteps[t_enc]].sqrt() + noise * (1 - acp[timesteps[t_enc]]).sqrt()
        self.initialize(p)
        kw = {"timesteps": sched}
        if "is_img2img" in inspect.signature(self.func).parameters:
            kw["is_img2img"] = True
        self.model_wrap_cfg.init_latent = x
        self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        self.last_latent = x
        return self.launch_sampling(
            t_enc + 1,
            lambda: self.func(self.model_wrap_cfg, xi, extra_args=self.sampler_extra_args, disable=True,
                              callback=self.callback_state, **kw),
        )
