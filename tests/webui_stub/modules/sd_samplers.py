from modules import sd_samplers_common, sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers = [
    sd_samplers_common.SamplerData(
        name, lambda model, f=func, o=opts: sd_samplers_kdiffusion.KDiffusionSampler(f, model, o), [], opts
    )
    for name, func, opts in sd_samplers_kdiffusion.samplers_k_diffusion
] + [
    sd_samplers_common.SamplerData(name, lambda model, f=func: sd_samplers_timesteps.CompVisSampler(f, model), [], opts)
    for name, func, opts in sd_samplers_timesteps.samplers_timesteps
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
