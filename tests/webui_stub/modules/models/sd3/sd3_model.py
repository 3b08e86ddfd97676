"""modules/models/sd3/sd3_model.py and sd3_impls.py, the parts the samplers see.

WebUI 1.10.1 runs SD3 Medium as a discrete flow-matching model: 1000 sigmas
σ(t) = shift·(t/1000) / (1 + (shift − 1)·t/1000) for t = 1…1000 (shift 3, so σ runs up to
exactly 1), `x = (1 − σ)·x0 + σ·ε`, a model that predicts the velocity and returns the
denoised `x − σ·v`, with the timestep 1000·σ. `create_denoiser()` wraps it in `SD3Denoiser`,
a k-diffusion `DiscreteSchedule` over those sigmas that passes sigma straight to
`apply_model` (no input scaling), which the k-diffusion samplers use; `add_noise_to_latent`
mixes noise in as the flow does. The WebUI's DDIM, PLMS and UniPC wrappers do not use it.
"""

import k_diffusion.external
import torch


def flow_sigmas(shift: float = 3.0, timesteps: int = 1000) -> torch.Tensor:
    t = torch.arange(1, timesteps + 1, 1) / 1000.0
    return shift * t / (1 + (shift - 1) * t) if shift != 1.0 else t


class SD3Denoiser(k_diffusion.external.DiscreteSchedule):
    def __init__(self, inner_model, sigmas):
        super().__init__(sigmas, quantize=False)
        self.inner_model = inner_model

    def forward(self, input, sigma, **kwargs):
        return self.inner_model.apply_model(input, sigma, **kwargs)
