"""backend/sampling/sampling_function.py: one CFG step the ComfyUI way.

`sampling_function` (called by Forge's CFGDenoiser) turns the A1111 conds into condition
dicts — one per AND-part, each weighted by `strength`, plus one uncond dict — adds the
image conditioning (`c_concat`) and ControlNet's `control` to each, runs the
`conditioning_modifiers`, then `sampling_function_inner`:

- at CFG scale 1 the uncond is not computed (`uncond_denoised` is zeros) unless a patch set
  `disable_cfg1_optimization`;
- the `sampler_pre_cfg_function`s see (and may replace) model, conds, x, timestep;
- `calc_cond_uncond_batch` evaluates every cond and uncond dict in as few model calls as
  can be concatenated (one, for plain prompts), passing `transformer_options` with
  `cond_or_uncond` (0 = cond, 1 = uncond per chunk) and `sigmas`, through the
  `model_function_wrapper` when one is set; all cond dicts are averaged (weighted by
  strength) into ONE cond output, the uncond dicts into one uncond output;
- CFG (or `sampler_cfg_function`), then each `sampler_post_cfg_function` in turn, with
  `denoised`, `cond`, `uncond`, `cond_denoised`, `uncond_denoised`, `sigma`, `input`,
  `model`, `model_options`.

All predictions are x0 (the model's `apply_model` returns denoised latents).
"""

import collections
import math

import torch

from backend import memory_management
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions

CondObj = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches"])


def get_area_and_mult(conds, x_in, timestep_in):
    area = (x_in.shape[2], x_in.shape[3], 0, 0)
    strength = conds.get("strength", 1.0)
    input_x = x_in
    mult = torch.ones_like(input_x) * strength
    conditioning = {name: c.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area)
                    for name, c in conds["model_conds"].items()}
    return CondObj(input_x, mult, conditioning, area, conds.get("control"), None)


def cond_equal_size(c1, c2):
    if c1 is c2:
        return True
    if c1.keys() != c2.keys():
        return False
    return all(c1[k].can_concat(c2[k]) for k in c1)


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape:
        return False
    if (c1.control is None) != (c2.control is None) or (c1.control is not None and c1.control is not c2.control):
        return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list):
    merged = {}
    for c in c_list:
        for k, v in c.items():
            merged.setdefault(k, []).append(v)
    return {k: v[0].concat(v[1:]) for k, v in merged.items()}


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    out_cond = torch.zeros_like(x_in)
    out_count = torch.ones_like(x_in) * 1e-37
    out_uncond = torch.zeros_like(x_in)
    out_uncond_count = torch.ones_like(x_in) * 1e-37
    COND, UNCOND = 0, 1

    to_run = [(get_area_and_mult(x, x_in, timestep), COND) for x in cond]
    if uncond is not None:
        to_run += [(get_area_and_mult(x, x_in, timestep), UNCOND) for x in uncond]

    while to_run:
        first = to_run[0]
        to_batch = [i for i in range(len(to_run)) if can_concat_cond(to_run[i][0], first[0])]
        to_batch.reverse()
        free_memory = memory_management.get_free_memory(x_in.device)
        for i in range(1, len(to_batch) + 1):
            amount = to_batch[: len(to_batch) // i]
            shape = [len(amount) * first[0].input_x.shape[0]] + list(first[0].input_x.shape)[1:]
            if model.memory_required(shape) < free_memory:
                to_batch = amount
                break

        input_x, mult, c, cond_or_uncond, control = [], [], [], [], None
        for i in to_batch:
            o = to_run.pop(i)
            input_x.append(o[0].input_x)
            mult.append(o[0].mult)
            c.append(o[0].conditioning)
            cond_or_uncond.append(o[1])
            control = o[0].control

        chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = cond_cat(c)
        timestep_ = torch.cat([timestep] * chunks)

        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        c["transformer_options"] = transformer_options

        if control is not None:
            c["control"] = control.get_control(input_x, timestep_, dict(c), len(cond_or_uncond))
            c["control_model"] = control

        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](
                model.apply_model, {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}
            ).chunk(chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(chunks)

        for k in range(chunks):
            if cond_or_uncond[k] == COND:
                out_cond += output[k] * mult[k]
                out_count += mult[k]
            else:
                out_uncond += output[k] * mult[k]
                out_uncond_count += mult[k]

    return out_cond / out_count, out_uncond / out_uncond_count


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options=None, seed=None,
                            return_full=False):
    model_options = model_options or {}
    edit_strength = sum(item.get("strength", 1) for item in cond)
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond

    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)

    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)

    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred,
                "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x}
        cfg_result = fn(args)

    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]

    image_cond_in = unet_patcher.extra_concat_condition
    if image_cond_in is None:
        image_cond_in = denoiser_params.image_cond
    if isinstance(image_cond_in, torch.Tensor) and image_cond_in.shape[0] == x.shape[0] \
            and image_cond_in.shape[2:] == x.shape[2:]:
        for d in (uncond or []) + cond:
            d["model_conds"]["c_concat"] = Condition(image_cond_in)

    if control is not None:
        for d in cond + (uncond or []):
            d["control"] = control

    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)

    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True)


def sampling_prepare(unet, x):
    b, c, h, w = x.shape
    memory_management.load_models_gpu(
        models=[unet], memory_required=unet.memory_required([b * 2, c, h, w]),
        hard_memory_preservation=unet.extra_preserved_memory_during_sampling)


def sampling_cleanup(unet):
    pass
