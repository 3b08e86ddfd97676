"""backend/modules/k_prediction.py: the predictor of a loaded model — its sigmas, the
sigma ↔ timestep map (timestep: the nearest of the 1000 discrete ones, as Forge does),
and the parameterisation: ε and v models denoise as x − σ·ε (x = x0 + σ·ε), flow models
('const') as x − σ·v with x = (1 − σ)·x0 + σ·ε."""

import torch


class Prediction(torch.nn.Module):
    def __init__(self, alphas_cumprod, prediction_type="epsilon"):
        super().__init__()
        self.prediction_type = prediction_type
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    def sigma_min(self):
        return self.sigmas[0]

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

    def calculate_input(self, sigma, noise):
        if self.prediction_type == "const":
            return noise
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma**2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        if self.prediction_type == "v_prediction":
            return model_input / (sigma**2 + 1) - model_output * sigma / (sigma**2 + 1) ** 0.5
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        if self.prediction_type == "const":
            return sigma * noise + (1.0 - sigma) * latent_image
        noise = noise * (torch.sqrt(1.0 + sigma**2.0) if max_denoise else sigma)
        return noise + latent_image


class PredictionFlux(Prediction):
    """Flux's predictor (PredictionFlux: 'const', the timestep IS σ, σ from a shifted
    1 … 1/10000 ramp): flow denoising x − σ·v, noising (1 − σ)·x0 + σ·ε."""

    def __init__(self, mu: float = 1.0, pseudo_timestep_range: int = 10000):
        torch.nn.Module.__init__(self)
        self.prediction_type = "const"
        t = torch.arange(1, pseudo_timestep_range + 1, 1) / pseudo_timestep_range
        sigmas = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + (1 / t - 1))  # time_shift(mu, 1, t)
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    def timestep(self, sigma):
        return sigma

    def sigma(self, timestep):
        return timestep

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return 1.0 - percent


class PredictionDiscreteFlow(Prediction):
    """SD3's predictor (PredictionDiscreteFlow, shift 3): 'const' (flow), timestep 1000·σ,
    σ from the shifted ramp shift·t / (1 + (shift − 1)·t), t = 1/1000 … 1."""

    def __init__(self, shift: float = 3.0, timesteps: int = 1000):
        torch.nn.Module.__init__(self)
        self.prediction_type = "const"
        self.multiplier = timesteps
        t = torch.arange(1, timesteps + 1, 1) / timesteps
        sigmas = shift * t / (1 + (shift - 1) * t)
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return self.sigmas[(timestep.long() - 1).clamp(0, len(self.sigmas) - 1)]

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.sigmas[int((1.0 - percent) * (len(self.sigmas) - 1))])
