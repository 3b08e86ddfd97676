"""ldm_patched/modules/model_sampling.py: the predictor of a loaded model (ModelSamplingDiscrete
with EPS or V_PREDICTION; sigma_data 1). σ → timestep is the NEAREST of the 1000 discrete
timesteps (argmin over log σ) — A1111's CompVisDenoiser(quantize=False) interpolates a
fractional one instead; timestep → σ interpolates log σ. The stand-in takes the sigmas from
the A1111 model's `alphas_cumprod` (reForge builds them from the model config's schedule)."""

import torch


class EPS:
    def calculate_input(self, sigma, noise):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        noise = noise * (torch.sqrt(1.0 + sigma**2.0) if max_denoise else sigma)
        return noise + latent_image


class V_PREDICTION(EPS):
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        sd = self.sigma_data
        return model_input * sd**2 / (sigma**2 + sd**2) - model_output * sigma * sd / (sigma**2 + sd**2) ** 0.5


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self, alphas_cumprod):
        super().__init__()
        self.sigma_data = 1.0
        self.set_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)

    def set_sigmas(self, sigmas):
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


def model_sampling(alphas_cumprod, prediction="eps"):
    """model_base.model_sampling: the discrete sampler mixed with the parameterisation."""
    base = V_PREDICTION if prediction == "v" else EPS

    class ModelSampling(ModelSamplingDiscrete, base):
        pass

    return ModelSampling(alphas_cumprod)
