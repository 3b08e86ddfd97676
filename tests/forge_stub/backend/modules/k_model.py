"""backend/modules/k_model.py: `KModel.apply_model(x, σ, c_concat, c_crossattn, control,
transformer_options, y=…)` → x0: the input scaled by the predictor, `c_concat` appended as
channels, σ turned into the model's timestep, the network's output turned into x0."""

import torch


class KModel(torch.nn.Module):
    def __init__(self, diffusion_model, predictor, computation_dtype=torch.float32):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.predictor = predictor
        self.computation_dtype = computation_dtype
        self.calls: list[int] = []  # rows of each model call, for the cost tests

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        timestep = self.predictor.timestep(t).float()
        self.calls.append(int(x.shape[0]))
        out = self.diffusion_model(xc.to(self.computation_dtype), timestep, context=c_crossattn.to(self.computation_dtype),
                                   control=control, transformer_options=transformer_options or {}, **kwargs).float()
        return self.predictor.calculate_denoised(sigma, out, x)

    def memory_required(self, input_shape):
        return input_shape[0] * input_shape[2] * input_shape[3] * 4096
