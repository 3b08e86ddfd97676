"""Implicit masks in the WebUI's sampling loop: attention from inside the model call, in both
of SEGA's paths, every start mode, batches; threshold mode untouched."""

from __future__ import annotations

import pytest
import torch
from host_harness import Host, fail_engine_step_at, sega_values
from test_webui_maps import count_syncs

from sega.fields import FIELDS
from sega_webui import attention

SIZE = dict(width=128, height=128)  # a 16 × 16 latent: a 4 × 4 attention grid


@pytest.fixture(scope="module")
def host():
    return Host()


def _hooks_left(host, kind):
    return sum(len(m._forward_hooks) for m in host.w.shared.sd_model.modules()) if kind else 0


@pytest.mark.parametrize("kind", ["sd1+attn", "sdxl+attn"])
def test_each_mask_changes_the_image_and_is_deterministic(host, kind):
    threshold = host.generate(sega_values(warmup="1"), kind=kind, **SIZE).images
    images = {}
    paths = []
    for mode in ("attention", "intersect"):
        spy = host.callback("cfg_denoised", lambda params: paths.append(host.w.host._current.record.pass_.separate))
        with spy:
            first = host.generate(sega_values(warmup="1", mask=mode), kind=kind, **SIZE)
        assert set(paths) == {False}  # our own hooks do not count as another extension's
        assert host.reported == [] and not any("SEGA" in c for c in first.comments)
        assert first.p.extra_generation_params["SEGA mask"] == mode
        again = host.generate(sega_values(warmup="1", mask=mode), kind=kind, **SIZE).images
        assert torch.equal(first.images, again)
        assert not torch.equal(first.images, threshold)
        images[mode] = first.images
        assert _hooks_left(host, kind) == 0  # taken off at the end of the generation
    assert not torch.equal(images["attention"], images["intersect"])


def test_threshold_mode_is_untouched(host):
    # The settings as clients sent them before the mask existed, and with the mask named.
    before = [v for v, f in zip(sega_values(warmup="1"), FIELDS, strict=True) if f.name != "mask"]
    old = host.generate(before, kind="sd1+attn", **SIZE)
    seen = []
    with host.callback("cfg_denoised", lambda params: seen.append(_hooks_left(host, "on"))):
        new = host.generate(sega_values(warmup="1", mask="threshold"), kind="sd1+attn", **SIZE)
    assert torch.equal(old.images, new.images)
    assert "SEGA mask" not in new.p.extra_generation_params
    assert set(seen) == {0}  # no hook on any layer while sampling


def test_concepts_act_only_where_their_words_are_attended(host):
    """QuadrantLDM: the concepts' words draw attention only in the top-left quadrant, and
    each latent block's output depends only on that block, so a masked concept may change
    the top-left quadrant and nothing else."""
    kwargs = dict(kind="quadrant", steps=6, **SIZE)
    values = dict(concepts="smile :: threshold=0.75\n-glasses :: threshold=0.75", warmup="0")
    none = host.generate(sega_values(scale=0.0, mask="attention", **values), **kwargs).images
    unmasked = host.generate(sega_values(**values), **kwargs).images
    for mode in ("attention", "intersect"):
        masked = host.generate(sega_values(mask=mode, **values), **kwargs).images
        assert host.reported == []
        diff = (masked - none).abs()
        assert diff[..., :8, :8].max() > 1e-3  # the quadrant changes…
        diff[..., :8, :8] = 0
        assert diff.max() <= 1e-6, mode  # …and nothing else does
    outside = (unmasked - none).abs()
    outside[..., :8, :8] = 0
    assert outside.max() > 1e-3  # SEGA's threshold alone would act elsewhere too


@pytest.mark.parametrize("setting", ["low VRAM", "chunked"])
def test_separate_and_chunked_calls_give_the_same_masks(host, setting):
    opts = host.w.shared.opts
    kwargs = dict(kind="sd1+attn", batch_size=2, **SIZE)
    values = sega_values(warmup="1", mask="intersect")
    widened = host.generate(values, **kwargs).images
    try:
        if setting == "low VRAM":
            opts.sega_low_vram = True
        else:
            opts.batch_cond_uncond = False
        other = host.generate(values, **kwargs)
    finally:
        opts.reset()
    assert host.reported == [] and not any("SEGA" in c for c in other.comments)
    torch.testing.assert_close(other.images, widened, rtol=1e-4, atol=1e-4)


def test_each_image_of_a_batch_gets_its_own_mask(host, monkeypatch):
    """Swapping the two images' noise swaps their masks (rows are concept-major, B each)."""
    maps = []
    real_collect = attention.ConceptAttention.collect

    def spy(self, grid):
        out = real_collect(self, grid)
        maps.append(out.clone())
        return out

    monkeypatch.setattr(attention.ConceptAttention, "collect", spy)
    cls = host.w.processing.StableDiffusionProcessing
    real_noise = cls.noise
    values = sega_values("smile\n-glasses", warmup="0", mask="attention")
    runs = []
    for order in ([0, 1], [1, 0]):
        monkeypatch.setattr(cls, "noise", lambda self, shape, i, order=order: real_noise(self, shape, i)[order])
        maps.clear()
        result = host.generate(values, kind="sd1+attn", batch_size=2, **SIZE)
        assert host.reported == []
        runs.append((result.images, torch.stack(maps).view(len(maps), 2, 2, 4, 4)))
    (images, first), (swapped, second) = runs
    torch.testing.assert_close(swapped, images[[1, 0]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, first[:, :, [1, 0]], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(first[:, :, 0], first[:, :, 1])  # the two images' masks differ


def test_img2img_inpainting_and_hires(host):
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1  # the left half is repainted
    values = sega_values(warmup="0", mask="intersect")
    plain = host.generate(None, kind="sd1+attn", img2img=True, mask=mask, steps=8, **SIZE)
    inpainted = host.generate(values, kind="sd1+attn", img2img=True, mask=mask, steps=8, **SIZE)
    assert host.reported == [] and not any("SEGA" in c for c in inpainted.comments)
    keep = mask == 0
    assert torch.equal(inpainted.samples[..., keep], plain.samples[..., keep])
    assert not torch.equal(inpainted.samples[..., ~keep], plain.samples[..., ~keep])
    img2img = host.generate(values, kind="sd1+attn", img2img=True, steps=8, **SIZE)
    assert not torch.equal(img2img.images, host.generate(None, kind="sd1+attn", img2img=True, steps=8, **SIZE).images)
    hires = dict(enable_hr=True, hr_second_pass_steps=3, denoising_strength=0.5, hr_scale=2.0, width=64, height=64)
    on = host.generate(values, kind="sd1+attn", **hires)
    off = host.generate(sega_values(warmup="0", mask="intersect", hires=False), kind="sd1+attn", **hires)
    assert host.reported == [] and not any("SEGA" in c for c in list(on.comments) + list(off.comments))
    assert not torch.equal(on.images, off.images)  # the hires pass (32 × 32 latent, 8 × 8 grid) is masked too


def test_per_concept_override_and_no_latent4_layers(host):
    mixed = host.generate(sega_values("smile :: mask=attention\n-glasses", warmup="1"), kind="sd1+attn", **SIZE)
    assert host.reported == [] and not any("SEGA" in c for c in mixed.comments)
    assert mixed.p.extra_generation_params["SEGA concepts"] == "smile :: mask=attention\n-glasses"
    threshold = host.generate(sega_values(warmup="1"), kind="sd1+attn", **SIZE).images
    assert not torch.equal(mixed.images, threshold)
    # A model without the WebUI's tokenizer (the plain stand-in) is told why, and left unmasked.
    result = host.generate(sega_values(mask="attention"), kind="sd1")
    reason = "the mask needs the WebUI's tokenizer (tokenize_line) to find the concepts' words, and this model has none"
    assert list(result.comments) == [f"SEGA off: {reason}"]
    assert result.p.extra_generation_params == {"SEGA off": reason}
    assert _hooks_left(host, "sd1") == 0
    # A tokenizer but no cross-attention on the latent/4 grid (the plain stand-in's UNet).
    import host_harness
    import tiny_models

    plain = tiny_models.TinyLDM("sd1")
    plain.cond_stage_model = tiny_models.StandInTokenizer(plain)
    host_harness._models["sd1+tokenizer"] = plain
    result = host.generate(sega_values(mask="intersect"), kind="sd1+tokenizer")
    assert len(result.comments) == 1 and next(iter(result.comments)).startswith(
        "SEGA off: the mask needs the UNet's cross-attention layers on the 2×2 grid (latent/4), and none saw")
    assert _hooks_left(host, "sd1+tokenizer") == 0
    assert torch.equal(result.images, host.generate(None, kind="sd1+tokenizer").images)


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_masks_add_no_device_to_host_copy_while_sampling(host, sampler):
    kwargs = dict(kind="sd1+attn", sampler_name=sampler, batch_size=2, **SIZE)
    with count_syncs(host) as on:
        host.generate(sega_values(warmup="1", mask="intersect", show_maps=True), **kwargs)
    with count_syncs(host) as off:
        host.generate(sega_values(warmup="1", show_maps=True), **kwargs)
    assert host.reported == []
    assert on["sega"] == 0 and on["all"] == off["all"]  # inside the model call's hooks too


def test_maps_show_where_each_mask_let_its_concept_act(host):
    """QuadrantLDM: each concept's map lies inside the quadrant and carries the outline of
    its mask; a concept without a mask gets no outline."""
    import numpy as np
    from PIL import Image

    from sega.maps import OUTLINE

    values = sega_values("smile :: threshold=0.75 mask=attention\n-glasses", warmup="0", show_maps=True)
    plain = host.generate(sega_values("smile :: threshold=0.75 mask=attention\n-glasses", warmup="0"),
                          kind="quadrant", **SIZE)
    on = host.generate(values, kind="quadrant", pil_images=True, **SIZE)
    assert host.reported == []
    maps = [img for img in on.images if "SEGA map" in getattr(img, "info", {})]
    captions = [img.info["SEGA map"] for img in maps]
    assert len(maps) == 3 and "outline: mask" in captions[0] and "outline" not in captions[1]
    # The outline, drawn on a picture big enough to see it (the stand-in's images are latents).
    state_mask = torch.zeros(16, 16)
    state_mask[:8, :8] = 1.0
    from sega.maps import MapLabel, render_maps

    big = Image.new("RGB", (256, 256), (128, 128, 128))
    heat = np.zeros((2, 16, 16), np.float32)
    heat[:, 2:6, 2:6] = 1.0
    pictures = render_maps(big, heat, [MapLabel("smile"), MapLabel("glasses", True)],
                           masks=np.stack([state_mask.numpy(), np.ones((16, 16), np.float32)]))
    drawn = (np.asarray(pictures[0][0]) == np.asarray(OUTLINE)).all(axis=-1)[:200]
    assert drawn[:128, 127].all() and drawn[127, :128].all()  # the quadrant's inner edge
    assert not drawn[:, 129:].any() and not drawn[129:, :].any()
    assert not (np.asarray(pictures[1][0]) == np.asarray(OUTLINE)).all(axis=-1)[:200].any()
    still = host.generate(values, kind="quadrant", **SIZE)
    assert torch.equal(still.images, plain.images)  # the maps change no latent


def test_engine_hands_the_maps_each_step_mask():
    from sega.guidance import ConceptGuidance, SegaGuidance

    torch.manual_seed(9)
    u, c = torch.randn(1, 4, 8, 8), torch.randn(2, 1, 4, 8, 8)
    maps = torch.zeros(2, 1, 2, 2)
    maps[:, :, 0, 0] = 1.0  # both concepts attended in the top-left cell only
    engine = SegaGuidance([ConceptGuidance(warmup=0, threshold=0.75, mask="attention"), ConceptGuidance(warmup=0)],
                          momentum_scale=0.0, track_maps=True)
    for step in range(2):
        engine.step(step, u, c, attention=maps)
    share = engine.maps.mask_result()
    heat = engine.maps.result()
    assert torch.equal(share[0, 0, :4, :4], torch.ones(4, 4)) and share[0, 0].sum() == 16
    assert torch.equal(share[1], torch.ones(1, 8, 8))  # the threshold concept: no mask
    assert heat[0, 0, 4:].sum() == 0 and heat[0, 0, :, 4:].sum() == 0 and heat[0, 0, :4, :4].sum() > 0


def test_hooks_go_when_sega_stops(host, monkeypatch):
    fail_engine_step_at(monkeypatch, 2)
    hooks = []
    with host.callback("cfg_denoiser", lambda params: hooks.append(_hooks_left(host, "on")), first=True):
        result = host.generate(sega_values(warmup="0", mask="attention"), kind="sd1+attn", steps=5, **SIZE)
    assert any("SEGA stopped" in c and "boom" in c for c in result.comments)
    assert hooks[0] == 0 and hooks[1] > 0 and hooks[2:] == [0] * len(hooks[2:])  # off from the failing call on


@pytest.mark.parametrize("extension", ["controlnet", "regional_prompter", "dynamic_thresholding"])
def test_masks_beside_other_extensions(host, extension):
    """ControlNet (fast path; its UNet strips the mark token the concept rows carry),
    Regional Prompter (separate call, its attention hooks set aside) and Dynamic
    Thresholding (separate call): the masks work and each image is deterministic."""
    import test_other_extensions as others

    make = getattr(others, extension)
    kwargs = dict(kind="sd1+attn", batch_size=2, prompt=others.PROMPT, **SIZE)
    alone = host.generate(None, extensions=[make()], **kwargs).images
    threshold = host.generate(sega_values(warmup="0"), extensions=[make()], **kwargs).images
    masked = host.generate(sega_values(warmup="0", mask="intersect"), extensions=[make()], **kwargs)
    assert host.reported == [] and not any("SEGA" in c for c in masked.comments), masked.comments
    again = host.generate(sega_values(warmup="0", mask="intersect"), extensions=[make()], **kwargs).images
    assert torch.equal(masked.images, again)
    assert not torch.equal(masked.images, alone) and not torch.equal(masked.images, threshold)


def test_a_tiled_latent_stops_the_masks_with_the_reason(host):
    import test_other_extensions as others

    result = host.generate(sega_values(warmup="0", mask="attention"), extensions=[others.tiled_diffusion()],
                           kind="sd1+attn", **SIZE)
    assert host.reported == []
    assert any(c.startswith("SEGA off: the mask needs the UNet's cross-attention layers on the 4×4 grid")
               for c in result.comments), result.comments
