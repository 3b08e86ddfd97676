"""End to end: SEGA through the WebUI stand-in's DDIM == diffusers' SemanticStableDiffusionPipeline
on the same UNet, text encoder, tokenizer, noise and settings."""

from __future__ import annotations

import pytest
import tiny_models
import torch
from host_harness import Host, model, sega_values

STEPS = 10  # the WebUI's DDIM runs len(range(0, 1000, 100)) - 1 = 9 of them
CFG = 7.0
PROMPT = "a photo of a face"


def reference(ldm, concepts, warmups, scale, threshold, cooldown, momentum_scale, momentum_beta, batch, seed):
    from diffusers import SemanticStableDiffusionPipeline

    pipe = SemanticStableDiffusionPipeline(
        vae=tiny_models.vae(),
        text_encoder=ldm.text_encoder,
        tokenizer=ldm.tokenizer,
        unet=ldm.unet,
        scheduler=tiny_models.ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    seen = {}
    pipe(
        prompt=[PROMPT] * batch,
        height=16,
        width=16,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        latents=latents,
        output_type="latent",
        callback=lambda i, t, x: seen.__setitem__(i, x.clone()),
        editing_prompt=[c.lstrip("-") for c in concepts],
        reverse_editing_direction=[c.startswith("-") for c in concepts],
        edit_guidance_scale=scale,
        edit_threshold=threshold,
        edit_warmup_steps=warmups,
        edit_cooldown_steps=cooldown,
        edit_momentum_scale=momentum_scale,
        edit_mom_beta=momentum_beta,
    )
    return seen[STEPS - 2]  # the latents after the WebUI's last DDIM step


CASES = {
    "two concepts, partial warm-up, momentum": (["smile", "-glasses"], [2, 4], 5.0, 0.9, None, 0.3, 0.6, 1),
    "batch of 2, cooldown": (["smile", "hat"], [1, 1], 4.0, 0.95, [6, 7], 0.2, 0.5, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_webui_ddim_matches_the_reference(name):
    concepts, warmups, scale, threshold, cooldown, ms, mb, batch = CASES[name]
    host = Host()
    ldm = model("sd1")
    lines = [f"{c} :: warmup={w}" + (f" cooldown={cooldown[i]}" if cooldown else "") for i, (c, w) in enumerate(zip(concepts, warmups, strict=True))]
    values = sega_values("\n".join(lines), scale=scale, threshold=threshold, momentum_scale=ms, momentum_beta=mb)
    ours = host.generate(values, sampler_name="DDIM", steps=STEPS, cfg_scale=CFG, prompt=PROMPT, batch_size=batch,
                         width=64, height=64, seed=11)
    assert host.reported == []
    ref = reference(ldm, concepts, warmups, scale, threshold, cooldown, ms, mb, batch, seed=11)
    tol = 1e-5 * max(1.0, ref.abs().max().item())
    assert (ours.images - ref).abs().max().item() <= tol
    plain = host.generate(None, sampler_name="DDIM", steps=STEPS, cfg_scale=CFG, prompt=PROMPT, batch_size=batch,
                          width=64, height=64, seed=11)
    assert (plain.images - ref).abs().max().item() > 1000 * tol
