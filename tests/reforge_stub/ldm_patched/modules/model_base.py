"""ldm_patched/modules/model_base.py: `BaseModel`, what `forge_objects.unet.model` is and what
`sampling_function` gets as `model`. `apply_model(x, t, c_concat, c_crossattn, control,
transformer_options, **kwargs)` with t = σ runs the `WrappersMP.APPLY_MODEL` wrappers of
`transformer_options`, then: the input scaled by the predictor (c_in), `c_concat` appended
as channels, σ → the nearest discrete timestep, the diffusion model called with `context`,
`control`, `transformer_options` and the extra conds (`y` for SDXL), its output turned
into x0 — the DENOISED latent, not ε. `current_patcher` stays None on reForge's A1111
sampling path (only the ComfyUI-style CFGGuider sets it), so no hooks apply.

`calls` (stand-in only) records the rows of each model call; `timesteps` the timesteps."""

import math

import torch

from ldm_patched.modules import patcher_extension


class BaseModel(torch.nn.Module):
    def __init__(self, diffusion_model, model_sampling, memory_usage_factor=1.0):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_sampling = model_sampling
        self.memory_usage_factor = memory_usage_factor
        self.memory_usage_factor_conds = ()
        self.manual_cast_dtype = None
        self.current_patcher = None
        self.device = torch.device("cpu")
        self.calls: list[int] = []
        self.timesteps: list[torch.Tensor] = []

    def get_dtype(self):
        return self.diffusion_model.dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):  # noqa: B006 - reForge's signature
        wrappers = patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.APPLY_MODEL, transformer_options)
        return patcher_extension.WrapperExecutor.new_class_executor(self._apply_model, self, wrappers).execute(
            x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        dtype = self.get_dtype()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        context = c_crossattn.to(dtype) if c_crossattn is not None else None
        extra = {k: (v.to(dtype) if hasattr(v, "dtype") else v) for k, v in kwargs.items()}
        self.calls.append(int(x.shape[0]))
        self.timesteps.append(t.detach().clone())
        out = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options,
                                   **extra).float()
        return self.model_sampling.calculate_denoised(sigma, out, x)

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        return self.model_sampling.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (noise.dim() - 1)), noise,
                                                 latent_image)

    def memory_required(self, input_shape, cond_shapes={}):  # noqa: B006
        """reForge's estimate without xformers/flash attention: 0.15 MiB per latent pixel and row."""
        area = input_shape[0] * math.prod(input_shape[2:])
        return (area * 0.15 * self.memory_usage_factor) * (1024 * 1024)
