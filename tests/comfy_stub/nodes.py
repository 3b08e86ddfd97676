"""nodes.py (ComfyUI 0.8.0): `CLIPTextEncode`, `EmptyLatentImage`, `KSampler` (`common_ksampler`:
noise from the seed, `noise_mask` from the LATENT, a step callback, comfy.sample.sample), as
V1 nodes. Not mirrored: the previewer (the callback only counts), batch_index, the other nodes."""

import comfy.sample
import comfy.samplers
import torch


class CLIPTextEncode:
    FUNCTION = "encode"

    def encode(self, clip, text):
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


class EmptyLatentImage:
    FUNCTION = "generate"

    def generate(self, width, height, batch_size=1):
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0):
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed)
    steps_seen = []

    def callback(step, x0, x, total_steps):
        steps_seen.append(step)

    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                  denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                                  disable_pbar=True, seed=seed)
    out = latent.copy()
    out["samples"] = samples
    return (out,)


class KSampler:
    FUNCTION = "sample"

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=denoise)


NODE_CLASS_MAPPINGS = {"CLIPTextEncode": CLIPTextEncode, "EmptyLatentImage": EmptyLatentImage, "KSampler": KSampler}
