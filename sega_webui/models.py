"""What SEGA needs to know about the checkpoint the WebUI has loaded. Plain Python and torch.

- Which checkpoint it is (`checkpoint`): the refiner switch may load other weights into the
  same model object (same architecture, one checkpoint kept in memory: the WebUI's
  `load_model_weights`), so the object's identity alone does not say the model changed.
- What its model call returns (`output_space`, see sega/spaces.py).
- Whether its latents mean the same as another checkpoint's (`latent_format`).
- Whether SEGA can define a noise estimate with the sampler the user picked
  (`sampler_problem`): the WebUI runs SD3 (a flow-matching model) correctly only through
  the denoiser the model builds itself (`create_denoiser`, used by the k-diffusion samplers);
  its DDIM, PLMS, UniPC and LCM wrappers call SD3 with timesteps where it expects sigmas and
  read its x0 prediction as a noise prediction, so no ε that SEGA could compute there would
  mean anything.
"""

from __future__ import annotations

from sega import spaces


def checkpoint(model) -> tuple:
    """Changes whenever the WebUI loads another checkpoint, into this object or another."""
    info = getattr(model, "sd_checkpoint_info", None)
    return (id(model), id(info), getattr(model, "sd_model_checkpoint", None))


def is_flow(model) -> bool:
    return bool(getattr(model, "is_sd3", False))


def noising(model):
    """How the model makes its noisy latent at σ from x0 and a standard-normal draw n, where
    that is not x0 + σ·n: the WebUI's SD3 (`add_noise_to_latent`); a flow model on Forge or
    reForge (its predictor's `noise_scaling`: σ·n + (1 − σ)·x0). None: x0 + σ·n."""
    add = getattr(model, "add_noise_to_latent", None)
    if add is not None:
        return add
    unet = getattr(getattr(model, "forge_objects", None), "unet", None)
    predictor = getattr(getattr(unet, "model", None), "predictor", None)
    if getattr(predictor, "prediction_type", None) == "const" and hasattr(predictor, "noise_scaling"):
        return lambda x0, noise, sigma: predictor.noise_scaling(sigma, noise, x0)
    return None


def rectified_flow_sampling(denoiser) -> bool:
    """Whether Forge's k-diffusion runs its rectified-flow variants of Euler a and DPM2 a
    here: it does when the sampler's model has a Flux predictor (k_diffusion/sampling.py,
    `isinstance(model.inner_model.predictor, PredictionFlux)`)."""
    predictor = getattr(getattr(denoiser, "inner_model", None), "predictor", None)
    return any(cls.__name__ == "PredictionFlux" for cls in type(predictor).__mro__)


def latent_format(model) -> tuple:
    """Checkpoints with equal formats share one latent space (the same VAE): SD 1.x and 2.x
    share one, SDXL (and its refiner, SSD) another, SD3 a third with 16 channels."""
    if is_flow(model):
        family = "sd3"
    elif getattr(model, "is_sdxl", False):
        family = "sdxl"
    else:
        family = "sd"
    return family, int(getattr(model, "latent_channels", 4) or 4)


def output_space(model, denoiser, timestep_denoiser_types) -> str:
    if timestep_denoiser_types and isinstance(denoiser, timestep_denoiser_types):
        return spaces.EPS
    return spaces.FLOW if is_flow(model) else spaces.DENOISED


def sampler_problem(model, denoiser) -> str | None:
    """Why SEGA cannot act with this model and CFG denoiser, or None."""
    if not is_flow(model) or denoiser is None:
        return None
    make = getattr(model, "create_denoiser", None)
    inner = getattr(denoiser, "inner_model", None)
    if make is None or inner is None or type(inner) is not type(make()):
        return ("the WebUI runs SD3 correctly only with its k-diffusion samplers (Euler, DPM++ 2M, …); "
                "this sampler reads SD3's output as another kind of prediction, so SEGA has no noise "
                "estimate to work with")
    return None
