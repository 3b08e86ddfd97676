"""Editing a photo in ComfyUI: invert once, remake it exactly, change only what the concepts
name (LEDITS++; editing-reference.md, sega/inversion.py).

ComfyUI's img2img re-noises the photo at random and its sampler functions draw their own
noise, so the edit runs its own sampler functions inside ComfyUI's sampling path: the
inversion node samples through a CFGGuider with a KSAMPLER whose function records, step by
step, the noise with which the chosen sampler passes through the photo's noisy latents, and
the edit samples through a KSAMPLER whose function replays them with the same step formulas
(sega/inversion.py), adding the residual the last step leaves. Everything per call is
ComfyUI's own: CFG, the inpainting blend of a latent's noise mask, the SEGA node's patch,
other packs' patches. With nothing acting, the edit makes the inversion's model calls again
with the same inputs and ends on the photo's latent.

ComfyUI keeps node outputs: the inversion node's result stays cached while its inputs stay,
so changing only the concepts re-runs the edit, not the inversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sega import cond_lists, spaces
from sega.inversion import Inversion, InversionError, check, invert, replay

from .maps import patch_of

# ComfyUI's sampler names → the k-diffusion function whose steps sega/inversion.py restates
# (and options).
EDIT_SAMPLERS = {
    "euler_ancestral": ("sample_euler_ancestral", {}),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {}),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}),
    "dpmpp_sde": ("sample_dpmpp_sde", {}),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {"solver_type": "midpoint"}),
    "dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}),
}
# On flow models (SD3, Flux) ComfyUI runs rectified-flow variants of these two.
FLOW_SAMPLERS = ("euler_ancestral", "dpm_2_ancestral")
INVERSION_TYPE = "SEGA_INVERSION"


def sampler_problem(sampler_name: str) -> str | None:
    if sampler_name not in EDIT_SAMPLERS:
        return (f"sampler_name: {sampler_name} adds no noise at its steps, so an edit cannot follow the photo; "
                f"use one that does: {', '.join(EDIT_SAMPLERS)}")
    return None


@dataclass
class PhotoInversion:
    """One inverted photo: the noises and residual, and what sampling again needs to retrace
    them (the start noise, the σs, the sampler and its settings, the latent and its mask)."""

    inversion: Inversion
    sampler_name: str
    eta: float
    s_noise: float
    sigmas: torch.Tensor
    noise: torch.Tensor
    latent: dict
    seed: int
    flow: bool
    x_start: torch.Tensor | None = None

    @property
    def funcname(self) -> str:
        return EDIT_SAMPLERS[self.sampler_name][0]

    @property
    def options(self) -> dict:
        return EDIT_SAMPLERS[self.sampler_name][1]

    @property
    def mebibytes(self) -> float:
        return (self.inversion.nbytes + self.noise.numel() * self.noise.element_size()) / 2**20

    def sampler(self):
        """ComfyUI's SAMPLER for the edit: the replay of this inversion."""
        from comfy import samplers

        def replaying(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
            return self._replay(model, x, sigmas, extra_args, callback)

        return samplers.KSAMPLER(_named(replaying, self.funcname))

    def _replay(self, model, x, sigmas, extra_args, callback):
        if self.x_start is not None and (x.shape != self.x_start.shape or not torch.equal(x, self.x_start.to(x))):
            got = (f"another latent of the same shape {tuple(x.shape)}" if x.shape == self.x_start.shape else
                   f"a latent of shape {tuple(x.shape)}, the inversion's is {tuple(self.x_start.shape)}")
            raise ValueError(f"SEGA edit: the latent to sample from is not the photo that was inverted ({got}); give "
                             "the edit the same LATENT, noise and σs as the inversion")
        return replay(self.funcname, _denoiser(model, x, extra_args), x, sigmas, self.inversion, eta=self.eta,
                      s_noise=self.s_noise, options=self.options, on_step=_reporter(callback, x),
                      rectified_flow=self.flow)


def _named(function, name: str):
    # SEGA's step clock knows a sampler's calls per step by k-diffusion's function name.
    function.__name__ = name
    return function


def _denoiser(model, x, extra_args):
    s_in = x.new_ones([x.shape[0]])
    return lambda x_, sigma: model(x_, sigma * s_in, **(extra_args or {}))


def _reporter(callback, x):
    """The sampler's per-step callback (ComfyUI's progress bar: also where /interrupt stops a
    run), after each step's first model call, as k-diffusion's samplers call it."""
    if callback is None:
        return None
    return lambda i, phase: callback({"i": i, "denoised": x, "x": x}) if phase == 1 else None


def without_sega(model):
    """The model with the SEGA node's functions taken off (the inversion retraces the
    photo's own trajectory: no concept may act in it)."""
    patch = patch_of(model)
    if patch is None:
        return model
    plain = model.clone()
    options = plain.model_options
    options["sampler_post_cfg_function"] = [f for f in options.get("sampler_post_cfg_function", [])
                                            if getattr(f, "__self__", None) is not patch]
    for kinds in options.get("transformer_options", {}).get("wrappers", {}).values():
        for key, functions in kinds.items():
            kinds[key] = [f for f in functions if getattr(f, "__self__", None) is not patch]
    return plain


class _InversionNoise:
    """ComfyUI's NOISE for SamplerCustomAdvanced: the inversion's start noise."""

    def __init__(self, photo: PhotoInversion):
        self.photo, self.seed = photo, photo.seed

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        if samples.shape != self.photo.noise.shape:
            raise ValueError(f"SEGA edit: the latent is {tuple(samples.shape)}, the inverted photo's is "
                             f"{tuple(self.photo.noise.shape)}: give the edit the LATENT that was inverted")
        return self.photo.noise.clone()


# What both passes are guided by: the same prompt, negative and CFG remake the photo.
GUIDED_BY = {
    "positive": ("CONDITIONING", {"tooltip": "Describes the photo."}),
    "negative": ("CONDITIONING",),
    "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                      "tooltip": "The inversion's CFG remakes the photo; another one is an edit too."}),
}


def _samplers():
    from comfy import samplers

    return samplers


class SegaInvertNode:
    """Inverts a photo's LATENT (VAEEncode; with a noise mask: inpainting) with a sampler
    that adds noise at its steps."""

    DESCRIPTION = ("Finds the noise with which the chosen sampler remakes this photo exactly, so that an edit "
                   "changes only what the SEGA concepts name. Connect the model before or after the SEGA node "
                   "(the inversion runs without it); the result stays cached while these inputs stay.")
    RETURN_TYPES = (INVERSION_TYPE,)
    RETURN_NAMES = ("inversion",)
    FUNCTION = "invert"
    CATEGORY = "sampling/SEGA"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            **{k: v for k, v in GUIDED_BY.items() if k != "cfg"},
            "latent": ("LATENT", {"tooltip": "The photo, encoded (VAEEncode; VAEEncodeForInpaint or SetLatentNoiseMask "
                                             "for an inpaint)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 10000}),
            "cfg": GUIDED_BY["cfg"],
            "sampler_name": (list(EDIT_SAMPLERS), {"default": "dpmpp_2m_sde"}),
            "scheduler": (_samplers().KSampler.SCHEDULERS,),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "How far back the inversion goes (the edit's strength)."}),
            "eta": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 10.0, "step": 0.01}),
            "s_noise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 10.0, "step": 0.01}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, sampler_name=None):
        return sampler_problem(sampler_name) or True if sampler_name is not None else True

    def invert(self, model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, denoise,
               eta=1.0, s_noise=1.0):
        import comfy.sample
        import latent_preview

        problem = sampler_problem(sampler_name)
        if problem:
            raise ValueError(problem)
        model = without_sega(model)
        sampling = model.get_model_object("model_sampling")
        flow = cond_lists.output_space(sampling) == spaces.FLOW
        if flow and sampler_name not in FLOW_SAMPLERS:
            raise ValueError(f"sampler_name: on a flow model (SD3, Flux) an edit retraces ComfyUI's rectified-flow "
                             f"samplers, {' and '.join(FLOW_SAMPLERS)}; {sampler_name} has none")
        funcname, options = EDIT_SAMPLERS[sampler_name]
        check(funcname, eta, s_noise)
        samplers = _samplers()
        image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        sigmas = samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas
        noise = comfy.sample.prepare_noise(image, seed)
        made = {}

        def record(model_k, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
            x0 = model_k.latent_image
            generator = torch.Generator().manual_seed(int(seed) + 1)  # the draws decide the edit: seeded

            def draw():
                return torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)

            made["x_start"] = x.detach().clone()
            made["inversion"] = invert(
                funcname, _denoiser(model_k, x, extra_args), x, x0, sigmas, draw, eta=eta, s_noise=s_noise,
                options=options, on_step=_reporter(callback, x), rectified_flow=flow,
                add_noise=(lambda x0_, n, sigma: sampling.noise_scaling(sigma, n, x0_)) if flow else None)
            return x0

        guider = samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        try:
            guider.sample(noise, image, samplers.KSAMPLER(_named(record, funcname)), sigmas,
                          denoise_mask=latent.get("noise_mask"), callback=latent_preview.prepare_callback(model, steps),
                          disable_pbar=True, seed=seed)
        except InversionError as e:
            raise ValueError(f"SEGA inversion: {e}") from None
        photo = PhotoInversion(made["inversion"], sampler_name, float(eta), float(s_noise), sigmas.cpu(), noise,
                               {**latent, "samples": image}, int(seed), flow, made["x_start"].cpu())
        return (photo,)


class SegaEditNode:
    """The edit of an inverted photo, KSampler-style: the same sampling again with the
    inversion's noises, the SEGA node's concepts acting."""

    DESCRIPTION = ("Samples the inverted photo again with the inversion's noises: with no concept acting it is the "
                   "photo; with the SEGA node's concepts only what they name changes.")
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "edit"
    CATEGORY = "sampling/SEGA"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model from the SEGA node (or the plain one: the photo again)."}),
            **GUIDED_BY,
            "inversion": (INVERSION_TYPE,),
        }}

    def edit(self, model, positive, negative, cfg, inversion: PhotoInversion):
        import latent_preview

        guider = _samplers().CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        latent = inversion.latent
        samples = guider.sample(inversion.noise.clone(), latent["samples"], inversion.sampler(), inversion.sigmas,
                                denoise_mask=latent.get("noise_mask"),
                                callback=latent_preview.prepare_callback(model, len(inversion.sigmas) - 1),
                                disable_pbar=True, seed=inversion.seed)
        return ({**latent, "samples": samples.cpu()},)


class SegaInversionSamplerNode:
    """NOISE, SAMPLER and SIGMAS that replay an inversion, for SamplerCustomAdvanced (with any
    guider: CFGGuider with the SEGA model, BasicGuider for Flux)."""

    DESCRIPTION = ("For SamplerCustomAdvanced: the inversion's start noise, its replaying sampler and its σs. Give "
                   "SamplerCustomAdvanced the LATENT that was inverted.")
    RETURN_TYPES = ("NOISE", "SAMPLER", "SIGMAS")
    FUNCTION = "unpack"
    CATEGORY = "sampling/SEGA"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"inversion": (INVERSION_TYPE,)}}

    def unpack(self, inversion: PhotoInversion):
        return (_InversionNoise(inversion), inversion.sampler(), inversion.sigmas.clone())
