"""comfy/samplers.py (ComfyUI 0.8.0, pollockjj/ComfyUI @ 618b803d = comfyanonymous 3cd7b32f) as far
as a MODEL patch sees it, shorter:

- from reForge's copy (see _reforge.py; its reForge-only options are off here): `sampling_function`
  (CFG-1 shortcut unless `disable_cfg1_optimization`, `sampler_calc_cond_batch_function` or
  `calc_cond_batch`, the pre-CFG list), `cfg_function` (`sampler_cfg_function`, plain CFG,
  every `sampler_post_cfg_function` with ComfyUI's args), `calc_cond_batch` → the
  `CALC_COND_BATCH` wrappers → `_calc_cond_batch` (packing by `can_concat`, the list
  reversed, halving while `memory_required·1.5 ≥ free memory`; `transformer_options` with
  `cond_or_uncond`, `uuids`, `sigmas`; `model_function_wrapper`; outputs summed ×mult and
  divided by the summed mult; None → zeros), with ComfyUI's `get_area_and_mult`
  (`timestep_start/_end`: dropped outside; `strength`);
- `KSamplerX0Inpaint`, `KSAMPLER` (noise kept for the inpaint blend, `noise_scaling` with
  max_denoise, the callback adapter (i, denoised, x, total_steps), `inverse_noise_scaling`),
  `ksampler`, `sampler_object` (ddim = euler with random inpaint noise);
- `CFGGuider`: `sample` (conds copied, options cloned, OUTER_SAMPLE wrappers) →
  `outer_sample` → `inner_sample` (`process_latent_in` unless the latent is all zeros,
  `process_conds`, `sample_sigmas` in the run's options copy, SAMPLER_SAMPLE wrappers over
  `sampler.sample(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
  disable_pbar)`, `process_latent_out`);
- `encode_model_conds`, `process_conds` (start/end percent → σ, model conds), the
  `normal`, `karras`, `simple` schedulers, `KSampler` (denoise < 1: the last steps of
  `int(steps/denoise)`; dpm_2 / dpm_2_ancestral: one more step, the penultimate σ dropped).

Not mirrored: areas and masks of conds, hooks, control nets, gligen, `default` conds,
context windows, nested latents, the other schedulers, uni_pc, `model.current_patcher`."""

import math
from types import SimpleNamespace

import torch

import comfy.k_diffusion.sampling as k_diffusion_sampling
from comfy import patcher_extension, sampler_helpers
from comfy._reforge import reuse
from comfy.model_patcher import create_model_options_clone

# reForge's own options (epsilon scaling) and AND-prompt strengths do not exist in ComfyUI.
_NO_REFORGE_OPTIONS = SimpleNamespace(opts=SimpleNamespace())
reuse("modules/samplers.py", globals(), {
    "from modules import shared": "shared = _NO_REFORGE_OPTIONS",
    'edit_strength = sum(item.get("strength", 1) for item in cond)': "edit_strength = 1.0"})


def get_area_and_mult(conds, x_in, timestep_in):
    if "timestep_start" in conds and timestep_in[0] > conds["timestep_start"]:
        return None
    if "timestep_end" in conds and timestep_in[0] < conds["timestep_end"]:
        return None
    mult = torch.ones_like(x_in) * conds.get("strength", 1.0)
    conditioning = {k: v.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=None)
                    for k, v in conds["model_conds"].items()}
    return CondObj(x_in, mult, conditioning, None, conds.get("control"), None, conds.get("uuid"), None)  # noqa: F821




class KSamplerX0Inpaint:
    def __init__(self, model, sigmas):
        self.inner_model = model
        self.sigmas = sigmas

    def __call__(self, x, sigma, denoise_mask, model_options={}, seed=None):  # noqa: B006
        if denoise_mask is not None:
            latent_mask = 1.0 - denoise_mask
            x = x * denoise_mask + self.inner_model.inner_model.scale_latent_inpaint(
                x=x, sigma=sigma, noise=self.noise, latent_image=self.latent_image) * latent_mask
        out = self.inner_model(x, sigma, model_options=model_options, seed=seed)
        if denoise_mask is not None:
            out = out * denoise_mask + self.latent_image * latent_mask
        return out


def simple_scheduler(model_sampling, steps):
    s = model_sampling
    ss = len(s.sigmas) / steps
    return torch.FloatTensor([float(s.sigmas[-(1 + int(x * ss))]) for x in range(steps)] + [0.0])


def normal_scheduler(model_sampling, steps):
    s = model_sampling
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
        steps += 1
        append_zero = False
    timesteps = torch.linspace(float(start), float(end), steps)
    sigs = [float(s.sigma(ts)) for ts in timesteps]
    return torch.FloatTensor(sigs + ([0.0] if append_zero else []))


def karras_scheduler(model_sampling, steps):
    return k_diffusion_sampling.get_sigmas_karras(n=steps, sigma_min=float(model_sampling.sigma_min),
                                                  sigma_max=float(model_sampling.sigma_max))


SCHEDULERS = {"normal": normal_scheduler, "karras": karras_scheduler, "simple": simple_scheduler}
SCHEDULER_NAMES = list(SCHEDULERS)
KSAMPLER_NAMES = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                  "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde"]
SAMPLER_NAMES = KSAMPLER_NAMES + ["ddim"]


def calculate_sigmas(model_sampling, scheduler_name, steps):
    return SCHEDULERS[scheduler_name](model_sampling, steps)


class Sampler:
    def max_denoise(self, model_wrap, sigmas):
        max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


class KSAMPLER(Sampler):
    def __init__(self, sampler_function, extra_options={}, inpaint_options={}):  # noqa: B006
        self.sampler_function = sampler_function
        self.extra_options = extra_options
        self.inpaint_options = inpaint_options

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        if self.inpaint_options.get("random", False):
            generator = torch.manual_seed(extra_args.get("seed", 41) + 1)
            model_k.noise = torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype)
        else:
            model_k.noise = noise
        sampling = model_wrap.inner_model.model_sampling
        noise = sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        k_callback = None
        total_steps = len(sigmas) - 1
        if callback is not None:
            k_callback = lambda x: callback(x["i"], x["denoised"], x["x"], total_steps)  # noqa: E731
        samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=k_callback,
                                        disable=disable_pbar, **self.extra_options)
        return sampling.inverse_noise_scaling(sigmas[-1], samples)


def ksampler(sampler_name, extra_options={}, inpaint_options={}):  # noqa: B006
    return KSAMPLER(getattr(k_diffusion_sampling, f"sample_{sampler_name}"), extra_options, inpaint_options)


def sampler_object(name):
    if name == "ddim":
        return ksampler("euler", inpaint_options={"random": True})
    return ksampler(name)


def encode_model_conds(model_function, conds, noise, device, prompt_type, **kwargs):
    for t in range(len(conds)):
        x = conds[t]
        params = x.copy()
        params["device"] = device
        params["noise"] = noise
        params["width"] = params.get("width", noise.shape[3] * 8)
        params["height"] = params.get("height", noise.shape[2] * 8)
        params["prompt_type"] = params.get("prompt_type", prompt_type)
        for k in kwargs:
            if k not in params:
                params[k] = kwargs[k]
        out = model_function(**params)
        x = x.copy()
        model_conds = x["model_conds"].copy()
        model_conds.update(out)
        x["model_conds"] = model_conds
        conds[t] = x
    return conds


def calculate_start_end_timesteps(model, conds):
    s = model.model_sampling
    for t, x in enumerate(conds):
        n = x.copy()
        if "start_percent" in x:
            n["timestep_start"] = s.percent_to_sigma(x["start_percent"])
        if "end_percent" in x:
            n["timestep_end"] = s.percent_to_sigma(x["end_percent"])
        conds[t] = n


def process_conds(model, noise, conds, device, latent_image=None, denoise_mask=None, seed=None):
    for k in conds:
        conds[k] = conds[k][:]
        calculate_start_end_timesteps(model, conds[k])
    for k in conds:
        conds[k] = encode_model_conds(model.extra_conds, conds[k], noise, device, k, latent_image=latent_image,
                                      denoise_mask=denoise_mask, seed=seed)
    return conds


class CFGGuider:
    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg):
        self.cfg = cfg

    def inner_set_conds(self, conds):
        for k in conds:
            self.original_conds[k] = sampler_helpers.convert_cond(conds[k])

    def __call__(self, *args, **kwargs):
        return self.outer_predict_noise(*args, **kwargs)

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
        return patcher_extension.WrapperExecutor.new_class_executor(
            self.predict_noise, self,
            patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.PREDICT_NOISE, self.model_options,
                                               is_model_options=True)).execute(x, timestep, model_options, seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
        return sampling_function(self.inner_model, x, timestep, self.conds.get("negative", None),  # noqa: F821
                                 self.conds.get("positive", None), self.cfg, model_options=model_options, seed=seed)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = process_conds(self.inner_model, noise, self.conds, device, latent_image, denoise_mask, seed)
        extra_model_options = create_model_options_clone(self.model_options)
        extra_model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": extra_model_options, "seed": seed}
        executor = patcher_extension.WrapperExecutor.new_class_executor(
            sampler.sample, sampler,
            patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.SAMPLER_SAMPLE,
                                               extra_args["model_options"], is_model_options=True))
        samples = executor.execute(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                     seed=None):
        self.inner_model, self.conds, self.loaded_models = sampler_helpers.prepare_sampling(
            self.model_patcher, noise.shape, self.conds, self.model_options)
        device = self.model_patcher.load_device
        try:
            output = self.inner_sample(noise.to(device), latent_image.to(device), device, sampler, sigmas.to(device),
                                       denoise_mask, callback, disable_pbar, seed)
        finally:
            del self.inner_model
        return output

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        self.conds = {k: [a.copy() for a in v] for k, v in self.original_conds.items()}
        orig_model_options = self.model_options
        try:
            self.model_options = create_model_options_clone(self.model_options)
            executor = patcher_extension.WrapperExecutor.new_class_executor(
                self.outer_sample, self,
                patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.OUTER_SAMPLE, self.model_options,
                                                   is_model_options=True))
            output = executor.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_options = orig_model_options
        del self.conds
        return output


def sample(model, noise, positive, negative, cfg, device, sampler, sigmas, model_options={}, latent_image=None,  # noqa: B006
           denoise_mask=None, callback=None, disable_pbar=False, seed=None):
    cfg_guider = CFGGuider(model)
    cfg_guider.set_conds(positive, negative)
    cfg_guider.set_cfg(cfg)
    return cfg_guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


class KSampler:
    SCHEDULERS = SCHEDULER_NAMES
    SAMPLERS = SAMPLER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = {"dpm_2", "dpm_2_ancestral"}

    def __init__(self, model, steps, device, sampler=None, scheduler=None, denoise=None, model_options={}):  # noqa: B006
        self.model, self.device = model, device
        self.scheduler, self.sampler = scheduler, sampler
        self.set_steps(steps, denoise)
        self.model_options = model_options

    def calculate_sigmas(self, steps):
        discard_penultimate_sigma = self.sampler in self.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        if discard_penultimate_sigma:
            steps += 1
        sigmas = calculate_sigmas(self.model.get_model_object("model_sampling"), self.scheduler, steps)
        if discard_penultimate_sigma:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    def set_steps(self, steps, denoise=None):
        self.steps = steps
        if denoise is None or denoise > 0.9999:
            self.sigmas = self.calculate_sigmas(steps)
        else:
            self.sigmas = self.calculate_sigmas(int(steps / denoise))[-(steps + 1):]

    def sample(self, noise, positive, negative, cfg, latent_image=None, denoise_mask=None, callback=None,
               disable_pbar=False, seed=None):
        return sample(self.model, noise, positive, negative, cfg, self.device, sampler_object(self.sampler),
                      self.sigmas, self.model_options, latent_image=latent_image, denoise_mask=denoise_mask,
                      callback=callback, disable_pbar=disable_pbar, seed=seed)
