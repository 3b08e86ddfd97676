"""comfy/model_sampling.py: reForge's EPS / V_PREDICTION / ModelSamplingDiscrete (see _reforge.py)
plus what ComfyUI 0.8.0 has beside them: `inverse_noise_scaling`, `CONST` (flow models: x0 =
x − σ·v, noise_scaling σ·n + (1 − σ)·latent, inverse ÷ (1 − σ)), `ModelSamplingFlux`
(σ(t) = e^shift / (e^shift + 1/t − 1), timestep = σ, shift 1.15) and SD3's
`ModelSamplingDiscreteFlow` (shift 3, timestep = 1000·σ)."""

import math

import torch

from comfy._reforge import reuse

reuse("modules/model_sampling.py", globals())
_discrete = model_sampling  # noqa: F821 - defined by reuse()


def _inverse_noise_scaling(self, sigma, latent):
    return latent


EPS.inverse_noise_scaling = _inverse_noise_scaling  # noqa: F821


class CONST:
    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma)


class ModelSamplingFlux(ModelSamplingDiscrete):  # noqa: F821 - the σ table and its ends as there
    def __init__(self, shift=1.15, timesteps=10000):
        torch.nn.Module.__init__(self)
        self.shift, self.sigma_data = shift, 1.0
        self.set_sigmas(self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps))

    def timestep(self, sigma):
        return sigma

    def sigma(self, timestep):
        t = torch.as_tensor(timestep, dtype=torch.float32)
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / t - 1) ** 1.0)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor(1.0 - percent)))


class ModelSamplingDiscreteFlow(ModelSamplingFlux):
    """SD3's: σ(t) = shift·t / (1 + (shift − 1)·t) of t = timestep / 1000, timestep = 1000·σ."""

    def __init__(self, shift=3.0, multiplier=1000, timesteps=1000):
        torch.nn.Module.__init__(self)
        self.shift, self.multiplier, self.sigma_data = shift, multiplier, 1.0
        self.set_sigmas(self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps * multiplier))

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        t = torch.as_tensor(timestep, dtype=torch.float32) / self.multiplier
        return self.shift * t / (1 + (self.shift - 1) * t)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * self.multiplier)))


def model_sampling(alphas_cumprod=None, prediction="eps"):
    if prediction in ("flux", "sd3"):
        base = ModelSamplingFlux if prediction == "flux" else ModelSamplingDiscreteFlow

        class ModelSampling(base, CONST):
            pass

        return ModelSampling()
    return _discrete(alphas_cumprod, prediction)
