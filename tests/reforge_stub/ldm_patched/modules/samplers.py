"""ldm_patched/modules/samplers.py: one CFG step the ComfyUI way, as reForge's CFGDenoiser calls it.

`sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options, seed)`:
- uncond is dropped (None) at CFG scale 1 unless `disable_cfg1_optimization`;
- conds = [cond, uncond]; `sampler_calc_cond_batch_function(args{conds, input, sigma, model,
  model_options})` if set, else `calc_cond_batch(model, conds, x, timestep, model_options)`;
- then each `sampler_pre_cfg_function(args{conds, conds_out, cond_scale, timestep, input,
  sigma, model, model_options})` → new conds_out (AFTER the model call; `args["input"]` is
  read back as x);
- `cfg_function`: `sampler_cfg_function(args{cond: x − cond_pred, uncond: x − uncond_pred,
  cond_scale, timestep, input, sigma, cond_denoised, uncond_denoised, model,
  model_options})` → x − result, else uncond + (cond − uncond)·scale (·Σ strengths when
  that is not 1); then each `sampler_post_cfg_function(args{denoised, cond, uncond,
  cond_scale, model, uncond_denoised, cond_denoised, sigma, model_options, input})` in turn
  (`uncond` = the dict list used, None when dropped; `uncond_denoised` is then zeros);
  then epsilon scaling when `opts.epsilon_scaling_enabled`.

`calc_cond_batch(model, conds: list[list[dict] | None], x_in, timestep, model_options)`
→ ONE output per list (None → zeros), each the strength-weighted mean of its dicts. It runs
the `WrappersMP.CALC_COND_BATCH` wrappers of `model_options["transformer_options"]` as
`wrapper(executor, model, conds, x_in, timestep, model_options)`; the wrapped
`_calc_cond_batch` packs every dict that can be concatenated into as few model calls as
`memory_required(...)·1.5 < get_free_memory()` allows (halving until it fits), rows in
REVERSE list order (uncond rows before cond rows), with `transformer_options` = a fresh
merge of model_options' plus `cond_or_uncond` (the list index of each chunk), `uuids`,
`sigmas`; through `model_function_wrapper(apply_model, {input, timestep, c,
cond_or_uncond})` when set. Not mirrored: areas, masks, hooks, gligen, timestep ranges,
`default` conds."""

import collections
import math

import torch
from modules import shared

from ldm_patched.modules import model_management, patcher_extension

CondObj = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches", "uuid",
                                              "hooks"])


def get_area_and_mult(conds, x_in, timestep_in):
    strength = conds.get("strength", 1.0)
    mult = torch.ones_like(x_in) * strength
    conditioning = {k: c.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=None)
                    for k, c in conds["model_conds"].items()}
    return CondObj(x_in, mult, conditioning, None, conds.get("control"), None, conds.get("uuid", 0), None)


def cond_equal_size(c1, c2):
    if c1 is c2:
        return True
    if c1.keys() != c2.keys():
        return False
    return all(c1[k].can_concat(c2[k]) for k in c1)


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape:
        return False
    for a, b in ((c1.control, c2.control), (c1.patches, c2.patches)):
        if (a is None) != (b is None) or (a is not None and a is not b):
            return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list):
    merged = {}
    for c in c_list:
        for k, v in c.items():
            merged.setdefault(k, []).append(v)
    return {k: v[0].concat(v[1:]) for k, v in merged.items()}


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    wrappers = patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.CALC_COND_BATCH, model_options,
                                                  is_model_options=True)
    executor = patcher_extension.WrapperExecutor.new_executor(_calc_cond_batch, wrappers)
    return executor.execute(model, conds, x_in, timestep, model_options)


def _calc_cond_batch(model, conds, x_in, timestep, model_options):
    out_conds = [torch.zeros_like(x_in) for _ in conds]
    out_counts = [torch.ones_like(x_in) * 1e-37 for _ in conds]
    # A cond outside its timestep range (start/end percent) sits this call out.
    to_run = [(p, i) for i, cond in enumerate(conds) if cond is not None for d in cond
              if (p := get_area_and_mult(d, x_in, timestep)) is not None]

    while to_run:
        first = to_run[0][0]
        to_batch_temp = [k for k in range(len(to_run)) if can_concat_cond(to_run[k][0], first)]
        to_batch_temp.reverse()
        to_batch = to_batch_temp[:1]
        free_memory = model_management.get_free_memory(x_in.device)
        for i in range(1, len(to_batch_temp) + 1):
            amount = to_batch_temp[: len(to_batch_temp) // i]
            shape = [len(amount) * first.input_x.shape[0]] + list(first.input_x.shape)[1:]
            cond_shapes = collections.defaultdict(list)
            for k in amount:
                for name, v in to_run[k][0].conditioning.items():
                    cond_shapes[name].append(v.size())
            if model.memory_required(shape, cond_shapes=cond_shapes) * 1.5 < free_memory:
                to_batch = amount
                break

        input_x, mult, c, cond_or_uncond, uuids, control = [], [], [], [], [], None
        for k in to_batch:
            o, index = to_run.pop(k)
            input_x.append(o.input_x)
            mult.append(o.mult)
            c.append(o.conditioning)
            cond_or_uncond.append(index)
            uuids.append(o.uuid)
            control = o.control

        chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = cond_cat(c)
        timestep_ = torch.cat([timestep] * chunks)

        transformer_options = {}
        if "transformer_options" in model_options:
            transformer_options = patcher_extension.merge_nested_dicts(transformer_options,
                                                                       model_options["transformer_options"],
                                                                       copy_dict1=False)
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["uuids"] = uuids[:]
        transformer_options["sigmas"] = timestep
        c["transformer_options"] = transformer_options

        if control is not None:
            c["control"] = control.get_control(input_x, timestep_, c, len(cond_or_uncond), transformer_options)

        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](
                model.apply_model, {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}
            ).chunk(chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(chunks)

        for k in range(chunks):
            out_conds[cond_or_uncond[k]] += output[k] * mult[k]
            out_counts[cond_or_uncond[k]] += mult[k]

    return [out / count for out, count in zip(out_conds, out_counts, strict=True)]


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    return tuple(calc_cond_batch(model, [cond, uncond], x_in, timestep, model_options))


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options={}, cond=None, uncond=None):  # noqa: B006
    edit_strength = sum(item.get("strength", 1) for item in cond)
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred if uncond_pred is not None else None,
                "cond_scale": cond_scale, "timestep": timestep, "input": x, "sigma": timestep,
                "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model,
                "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif uncond_pred is None:
        cfg_result = cond_pred
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model,
                "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                "model_options": model_options, "input": x}
        cfg_result = fn(args)

    if getattr(shared.opts, "epsilon_scaling_enabled", False):
        factor = getattr(shared.opts, "epsilon_scaling_factor", 1.005)
        factor = 1e-9 if math.isclose(factor, 0.0) else factor
        cfg_result = x - (x - cfg_result) / factor
    return cfg_result


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):  # noqa: B006
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond

    conds = [cond, uncond_]
    if "sampler_calc_cond_batch_function" in model_options:
        args = {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        out = model_options["sampler_calc_cond_batch_function"](args)
    else:
        out = calc_cond_batch(model, conds, x, timestep, model_options)

    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                "sigma": timestep, "model": model, "model_options": model_options}
        out = fn(args)
        x = args["input"]

    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options, cond=cond,
                        uncond=uncond_)
