"""modules/sd_samplers.py: the k-diffusion samplers only (the stand-in does not mirror
Forge's timestep samplers, which run through the same `sampling_function` with x0 outputs)."""

from modules import sd_samplers_common, sd_samplers_kdiffusion

all_samplers = [
    sd_samplers_common.SamplerData(
        name, lambda model, f=func, o=opts: sd_samplers_kdiffusion.KDiffusionSampler(f, model, o), [], opts
    )
    for name, func, opts in sd_samplers_kdiffusion.samplers_k_diffusion
]
all_samplers_map = {x.name: x for x in all_samplers}


def find_sampler_config(name):
    return all_samplers_map.get(name)


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
