"""modules_forge/forge_sampler.py: A1111 conds → ldm_patched cond dicts, and the UNet load
around sampling.

`cond_from_a1111_to_patched_ldm(cond)` → a ONE-dict list: a tensor [B, T, C] gives
{cross_attn, model_conds: {c_crossattn: CONDCrossAttn}}; an SDXL dict {crossattn, vector}
gives {cross_attn, pooled_output, model_conds: {c_crossattn: CONDCrossAttn, y: CONDRegular}}.
`cond_from_a1111_to_patched_ldm_weighted(cond, weights)`: one such dict per AND-part
(column of the composition), its rows picked out of `cond` (`advanced_indexing` for a
DictWithShape), with the part's weight as `strength`. (reForge's `forge_sample` is no
longer called by its CFG denoiser and is not mirrored.)

`sampling_prepare(unet, x)` asks `load_models_gpu` for the memory of 2·B rows
(`memory_peak_estimation_modifier` when set) plus `extra_preserved_memory_during_sampling`."""

import torch
from ldm_patched.modules import model_management
from ldm_patched.modules.conds import CONDCrossAttn, CONDRegular


def cond_from_a1111_to_patched_ldm(cond):
    if isinstance(cond, torch.Tensor):
        return [dict(cross_attn=cond, model_conds=dict(c_crossattn=CONDCrossAttn(cond)))]
    return [dict(cross_attn=cond["crossattn"], pooled_output=cond["vector"],
                 model_conds=dict(c_crossattn=CONDCrossAttn(cond["crossattn"]), y=CONDRegular(cond["vector"])))]


def cond_from_a1111_to_patched_ldm_weighted(cond, weights):
    results = []
    for part in map(list, zip(*weights, strict=False)):
        indices = [i for i, _ in part]
        weight = part[-1][1] if part else 0
        feed = cond.advanced_indexing(indices) if hasattr(cond, "advanced_indexing") else cond[indices]
        h = cond_from_a1111_to_patched_ldm(feed)
        h[0]["strength"] = weight
        results += h
    return results


def sampling_prepare(unet, x):
    b, c, h, w = x.shape
    estimate = unet.model_options.get("memory_peak_estimation_modifier", unet.memory_required)
    memory = estimate([b * 2, c, h, w]) + unet.extra_preserved_memory_during_sampling
    model_management.load_models_gpu(models=[unet] + list(unet.extra_model_patchers_during_sampling),
                                     memory_required=memory)


def sampling_cleanup(unet):
    pass
