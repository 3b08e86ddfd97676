"""What Neutral Prompt (ljleb/sd-webui-neutral-prompt, lib_neutral_prompt/
cfg_denoiser_hijack.py) does to the model call: it replaces `sd_samplers.create_sampler`
and sets, on every new sampler's CFG denoiser instance, `combine_denoised` to a
functools.partial of its own function around the previous one. That function reads the
cond rows named in `conds_list` and the last B rows as uncond (here: it also leans the
result a little towards the prompt, standing in for its AND_SALT arithmetic).
"""

import functools

from modules import sd_samplers


def combine_denoised_hijack(x_out, conds_list, uncond, cond_scale, original_function):
    out = original_function(x_out, conds_list, uncond, cond_scale)
    b = len(conds_list)
    for i, conds in enumerate(conds_list):
        for index, _ in conds:
            out[i] = out[i] + 0.1 * (x_out[index] - x_out[-b + i])
    return out


class NeutralPrompt:
    def install(self):
        self.original = sd_samplers.create_sampler
        original = self.original

        def create_sampler(name, model):
            sampler = original(name, model)
            denoiser = sampler.model_wrap_cfg
            denoiser.combine_denoised = functools.partial(
                combine_denoised_hijack, original_function=denoiser.combine_denoised)
            return sampler

        sd_samplers.create_sampler = create_sampler

    def uninstall(self):
        sd_samplers.create_sampler = self.original
