"""comfy/sample.py: `prepare_noise` (a CPU generator seeded with the seed), `sample` (KSampler
with the model's options), `fix_empty_latent_channels` (nothing to fix for the tiny models)."""

import torch

import comfy.samplers


def prepare_noise(latent_image, seed, noise_inds=None):
    generator = torch.manual_seed(seed)
    return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout,
                       generator=generator, device="cpu")


def fix_empty_latent_channels(model, latent_image):
    return latent_image


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
           disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None,
           sigmas=None, callback=None, disable_pbar=False, seed=None):
    sampler = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                      scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    samples = sampler.sample(noise, positive, negative, cfg=cfg, latent_image=latent_image, denoise_mask=noise_mask,
                             callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples.to(torch.device("cpu"))
