"""What Dynamic Thresholding (mcmonkeyprojects/sd-dynamic-thresholding, scripts/
dynamic_thresholding.py and dynthres_core.py) does to the model call: in process_batch it
registers a copy of the chosen sampler under a new name ("Euler_dynthres1") whose CFG
denoiser is a subclass with its own `combine_denoised`, and switches `p.sampler_name` to
it. That `combine_denoised` takes every row before the last B (`x_out[:-B]`) as the
prompt conds, B groups of equal size, weighted by `conds_list`, then rescales the CFG
result towards a lower "mimic" scale. (The real one refuses DDIM and PLMS; the stand-in
lets the same combine run under DDIM too, to test the rule for ε-space samplers.)
"""

import torch
from modules import sd_samplers, sd_samplers_common

_count = [0]


def _dynthresh(cond, uncond, cfg_scale, weights, mimic_scale, percentile):
    per_image = cond.shape[0] // uncond.shape[0]
    stacked = cond.reshape((-1, per_image) + uncond.shape[1:])
    relative = ((stacked - uncond.unsqueeze(1)) * weights).sum(1)
    mimic = uncond + relative * mimic_scale
    target = uncond + relative * cfg_scale
    flat_mimic, flat_target = mimic.flatten(2), target.flatten(2)
    mean = flat_target.mean(dim=2, keepdim=True)
    centered = flat_target - mean
    mimic_max = (flat_mimic - flat_mimic.mean(dim=2, keepdim=True)).abs().max(dim=2, keepdim=True).values
    limit = torch.quantile(centered.abs(), percentile, dim=2, keepdim=True).clamp(min=mimic_max)
    out = centered.clamp(-limit, limit) / limit * mimic_max + mean
    return out.view_as(target)


class DynamicThresholding:
    def __init__(self, mimic_scale=3.0, percentile=0.95):
        self.mimic_scale, self.percentile = mimic_scale, percentile

    def process_batch(self, p, **kwargs):
        original = sd_samplers.all_samplers_map[p.sampler_name]
        _count[0] += 1
        name = f"{p.sampler_name}_dynthres{_count[0]}"
        settings = self

        def constructor(model):
            result = original.constructor(model)
            base = type(result.model_wrap_cfg)

            class CustomCFGDenoiser(base):
                def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
                    if isinstance(uncond, dict):
                        uncond = uncond["crossattn"]
                    b = uncond.shape[0]
                    weights = torch.tensor(conds_list, device=x_out.device).select(2, 1)
                    weights = weights.reshape(*weights.shape, 1, 1, 1).to(x_out.dtype)
                    return _dynthresh(x_out[:-b], x_out[-b:], cond_scale, weights, settings.mimic_scale,
                                      settings.percentile)

            result.model_wrap_cfg = CustomCFGDenoiser(result)
            return result

        sd_samplers.all_samplers_map[name] = sd_samplers_common.SamplerData(name, constructor, [], original.options)
        self.original_name, p.sampler_name = p.sampler_name, name

    def postprocess_batch(self, p, **kwargs):
        del sd_samplers.all_samplers_map[p.sampler_name]
        p.sampler_name = self.original_name
