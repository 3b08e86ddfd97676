"""comfy_extras/nodes_custom_sampler.py: `Guider_Basic` (BasicGuider: the positive only, no
negative at all) and SamplerCustomAdvanced's sampling (`sample_custom`: guider.sample with the
noise, sampler, sigmas and a step callback)."""

import comfy.samplers


class Guider_Basic(comfy.samplers.CFGGuider):
    def set_conds(self, positive):
        self.inner_set_conds({"positive": positive})


def sample_custom(noise, guider, sampler, sigmas, latent, seed):
    steps = []
    samples = guider.sample(noise, latent["samples"], sampler, sigmas, denoise_mask=latent.get("noise_mask"),
                            callback=lambda i, x0, x, total: steps.append(i), disable_pbar=True, seed=seed)
    return {**latent, "samples": samples}
