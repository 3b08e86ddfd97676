"""SEGA through the refiner switch.

The WebUI's refiner (`sd_samplers_common.apply_refiner`, WebUI 1.6+) loads another checkpoint
in the middle of a sampling pass, at the start of the first model call past the switch
point: it loads the weights (into the same model object when the architecture is the same,
else into another one), re-encodes the prompt for the new model (`p.setup_conds()`, at the
pass's size: the hires size in a hires pass) and drops the denoiser's wrapped model, all
before `cfg_denoiser_callback` runs. So SEGA notices the switch in that callback, encodes its
concepts for the new model the same way, and goes on with the same pass: the same step
clock, the same engine (warm-up, cooldown and the momentum carry on), the same maps.

What belongs to the old model is dropped and found again: the concepts' conds and their
token lengths, the cached rows, the mark token another extension put in front of the
prompt's conds, and the choice between the widened and the separate call (the new model's
attention layers may be hooked or not).

The momentum ν is a running mix of thresholded noise-estimate differences, in the latent
space of the model that made them. Where the refiner's latents mean the same (SD 1.x ↔ 2.x,
SDXL ↔ SDXL refiner: the same VAE) it carries over unchanged. Where they do not (SD 1.5 →
SDXL: another VAE, the same 4 channels), a direction in one space is no direction in the
other, so the momentum restarts from zero at the switch; the concepts go on.
"""

from __future__ import annotations

from sega_webui import models


def rebase(pass_, model, schedules) -> bool:
    """Point `pass_` at `model` with the concepts' `schedules` encoded for it. Returns
    whether the momentum was restarted (the latent spaces differ)."""
    restart = models.latent_format(model) != models.latent_format(pass_.model)
    pass_.model = model
    pass_.checkpoint = models.checkpoint(model)
    pass_.set_schedules(schedules)
    pass_.rows_cache.clear()
    pass_.lead = pass_.UNKNOWN
    pass_.separate = None
    pass_.attention_hooks = []
    if restart and pass_.guidance is not None:
        pass_.guidance.restart_momentum()
    return restart


def follow_switch(p, run, pass_, denoiser, model, encode, unsupported) -> bool:
    """The refiner loaded `model`; True when SEGA goes on with it. `encode(p, run, model,
    hires)` makes the concepts' conds as for the prompt, `unsupported(p, model)` says why a
    model cannot be guided (host.py's own)."""
    reason = unsupported(p, model) or models.sampler_problem(model, denoiser)
    if reason:
        run.fail(p, pass_, f"the refiner switched to a checkpoint SEGA cannot guide here: {reason}")
        return False
    try:
        schedules, texts = encode(p, run, model, pass_.hires)
    except Exception as e:
        run.fail(p, pass_, f"the concepts could not be encoded for the refiner ({type(e).__name__}: {e})", e)
        return False
    if pass_.masks is not None:  # the hooks sit on the old model's layers: made anew at the next call
        pass_.masks.remove()
        pass_.masks = None
    pass_.texts = texts
    if rebase(pass_, model, schedules):
        run.comment(p, "SEGA: the momentum restarted at the refiner switch (the refiner's latents are of another kind)")
    return True
