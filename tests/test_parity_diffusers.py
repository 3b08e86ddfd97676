"""Our guidance engine in a plain DDIM loop == diffusers' SemanticStableDiffusionPipeline."""

from __future__ import annotations

import pytest
import tiny_models
import torch

from sega import guidance as guidance_module
from sega.guidance import ConceptGuidance, SegaGuidance

STEPS = 10
CFG = 7.5


@pytest.fixture(scope="module")
def parts():
    return {
        "tokenizer": tiny_models.byte_level_tokenizer(),
        "text_encoder": tiny_models.text_encoder(seed=1),
        "unet": tiny_models.unet(seed=2),
        "vae": tiny_models.vae(seed=3),
    }


def reference_latents(parts, prompts, latents, concepts, momentum_scale, momentum_beta):
    from diffusers import SemanticStableDiffusionPipeline

    pipe = SemanticStableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=tiny_models.ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = {}
    if concepts:
        cooldowns = [c["cooldown"] for c in concepts]
        kwargs = dict(
            editing_prompt=[c["text"] for c in concepts],
            reverse_editing_direction=[c.get("reverse", False) for c in concepts],
            edit_guidance_scale=[c["scale"] for c in concepts],
            edit_threshold=[c["threshold"] for c in concepts],
            edit_warmup_steps=[c["warmup"] for c in concepts],
            # The reference takes None for all or a list of ints; "never" is past the end.
            edit_cooldown_steps=None
            if all(cd is None for cd in cooldowns)
            else [STEPS + 1 if cd is None else cd for cd in cooldowns],
            edit_weights=[c["weight"] for c in concepts],
            edit_momentum_scale=momentum_scale,
            edit_mom_beta=momentum_beta,
        )
    out = pipe(
        prompt=prompts,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        latents=latents.clone(),
        output_type="latent",
        **kwargs,
    )
    return out.images


def encode(parts, texts):
    tok = parts["tokenizer"]
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return parts["text_encoder"](ids)[0]


@torch.no_grad()
def our_latents(parts, prompts, latents, concepts, momentum_scale, momentum_beta):
    b = len(prompts)
    unet = parts["unet"]
    scheduler = tiny_models.ddim_scheduler()
    scheduler.set_timesteps(STEPS)
    cond = encode(parts, prompts)
    uncond = encode(parts, [""] * b)
    sega = None
    concept_conds = None
    if concepts:
        sega = SegaGuidance(
            [
                ConceptGuidance(
                    scale=c["scale"],
                    threshold=c["threshold"],
                    warmup=c["warmup"],
                    cooldown=c["cooldown"],
                    weight=c["weight"],
                    reverse=c.get("reverse", False),
                )
                for c in concepts
            ],
            momentum_scale=momentum_scale,
            momentum_beta=momentum_beta,
        )
        concept_conds = encode(parts, [c["text"] for c in concepts])  # [N, 77, D]
    x = latents.clone()
    for i, t in enumerate(scheduler.timesteps):
        active = sega.rows_needed(i) if sega else ()
        rows = [uncond, cond] + [concept_conds[j : j + 1].expand(b, -1, -1) for j in active]
        text = torch.cat(rows)
        out = unet(torch.cat([x] * len(rows)), t, encoder_hidden_states=text).sample
        eps_u, eps_p = out[:b], out[b : 2 * b]
        guidance = CFG * (eps_p - eps_u)
        if sega is not None:
            eps_c = out[2 * b :].view(len(active), b, *x.shape[1:]) if active else None
            guidance = guidance + sega.step(i, eps_u, eps_c)
        eps = eps_u + guidance  # the reference's association, so rounding matches too
        x = scheduler.step(eps, t, x).prev_sample
    return x


def concept(text, **kw):
    base = dict(text=text, scale=5.0, threshold=0.9, warmup=2, cooldown=None, weight=1.0)
    base.update(kw)
    return base


CASES = {
    "one concept": ([concept("smiling, smile")], 0.1, 0.4, 1),
    "partial warm-up": (
        [concept("glasses", warmup=1), concept("beard", warmup=4, scale=4.0, threshold=0.975)],
        0.3,
        0.6,
        1,
    ),
    "reverse": ([concept("glasses", reverse=True), concept("hat", warmup=3)], 0.1, 0.4, 1),
    "cooldown": ([concept("curls", warmup=1, cooldown=6), concept("hat", warmup=2, cooldown=8)], 0.3, 0.6, 1),
    "weights incl. 0": (
        [concept("glasses", weight=0.0), concept("beard", weight=2.0, warmup=3), concept("hat", weight=0.5)],
        0.2,
        0.5,
        1,
    ),
    "momentum off": ([concept("glasses", warmup=1), concept("beard", warmup=5)], 0.0, 0.4, 1),
    "batch of 2": (
        [concept("glasses", threshold=0.95), concept("beard", reverse=True, warmup=3, cooldown=8)],
        0.3,
        0.6,
        2,
    ),
}


def initial_latents(b, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((b, 4, 32, 32), generator=g)


def prompts_for(b):
    return ["a photo of a face", "a portrait of a man"][:b]


def check_parity(parts, name):
    concepts, ms, mb, b = CASES[name]
    latents = initial_latents(b)
    ref = reference_latents(parts, prompts_for(b), latents, concepts, ms, mb)
    ours = our_latents(parts, prompts_for(b), latents, concepts, ms, mb)
    tol = 1e-5 * max(1.0, ref.abs().max().item())
    return ref, ours, tol


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(parts, name):
    ref, ours, tol = check_parity(parts, name)
    assert (ours - ref).abs().max().item() <= tol
    # A parity test only proves something if SEGA actually moved the result.
    b = ref.shape[0]
    plain = our_latents(parts, prompts_for(b), initial_latents(b), [], 0.0, 0.0)
    assert (plain - ref).abs().max().item() > 1000 * tol


def test_plain_cfg_matches_reference_without_concepts(parts):
    latents = initial_latents(1)
    ref = reference_latents(parts, prompts_for(1), latents, [], 0.1, 0.4)
    ours = our_latents(parts, prompts_for(1), latents, [], 0.1, 0.4)
    assert (ours - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_whole_latent_threshold_is_caught(parts, monkeypatch):
    """The parity test is sharp enough to catch a threshold taken over the whole latent."""

    def whole_latent(psi, thresholds, region=None):
        k = psi.shape[0]
        flat = psi.reshape(k, -1)
        q = torch.stack([torch.quantile(flat[i].abs(), float(thresholds[i])) for i in range(k)])
        return torch.where(flat.abs() >= q[:, None], flat, torch.zeros_like(flat)).view_as(psi)

    monkeypatch.setattr(guidance_module, "threshold_guidance", whole_latent)
    ref, ours, tol = check_parity(parts, "batch of 2")
    assert (ours - ref).abs().max().item() > tol
