"""What SEGA must do alike in every host, run over the three stand-ins: AUTOMATIC1111 1.10.1
(tests/webui_stub), Forge (tests/forge_stub over it) and reForge (tests/reforge_stub over it)."""

from __future__ import annotations

import forge
import host_harness
import pytest
import reforge
import torch
from host_harness import init_latent, sega_values

HOSTS = ["a1111", "forge", "reforge"]
_MAKERS = {"a1111": host_harness.Host, "forge": forge.Host, "reforge": reforge.Host}
_hosts: dict = {}


def _host(name: str):
    if name not in _hosts:
        _hosts[name] = _MAKERS[name]()
    return _hosts[name]


@pytest.fixture(params=HOSTS)
def host(request):
    return _host(request.param)


@pytest.mark.parametrize("name", ["forge", "reforge"])
def test_the_first_guided_steps_estimates_and_term_equal_the_a1111_paths(name, monkeypatch):
    """Same model, sampler and seed: the first guided step's ε_u, ε_c and term (the first σ
    is a whole timestep, where the ComfyUI-style hosts feed the UNet what A1111 does)."""
    from sega.guidance import SegaGuidance

    seen = {}
    real = SegaGuidance.step

    def spy(self, step, uncond, concepts, *args, **kwargs):
        term = real(self, step, uncond, concepts, *args, **kwargs)
        seen.setdefault(spy.host, (uncond.clone(), concepts.clone(), term.clone()))
        return term

    monkeypatch.setattr(SegaGuidance, "step", spy)
    for spy.host in ("a1111", name):
        _MAKERS[spy.host]().generate(sega_values(warmup="0"), sampler_name="Euler", batch_size=2)
    for a, other in zip(seen["a1111"], seen[name], strict=True):
        torch.testing.assert_close(other, a, rtol=1e-4, atol=1e-5)
    assert seen[name][2].abs().max() > 0


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun"])
def test_off_or_empty_is_bit_identical_and_on_changes_the_image(host, sampler):
    plain = host.generate(None, sampler_name=sampler, batch_size=2)
    baseline = plain.images
    off = host.generate(sega_values(enabled=False), sampler_name=sampler, batch_size=2)
    empty = host.generate(sega_values(concepts="# nothing\n"), sampler_name=sampler, batch_size=2)
    assert torch.equal(off.images, baseline) and torch.equal(empty.images, baseline)
    # The host's own entries only (reForge notes its refiner switch on every image).
    assert off.extra_generation_params == empty.extra_generation_params == plain.extra_generation_params
    assert not any("SEGA" in key for key in plain.extra_generation_params)
    on = host.generate(sega_values(), sampler_name=sampler, batch_size=2)
    assert not torch.equal(on.images, baseline)
    assert torch.equal(on.images, host.generate(sega_values(), sampler_name=sampler, batch_size=2).images)
    assert host.reported == [] and on.comments == {}
    assert on.extra_generation_params["SEGA concepts"] == "smile\n-glasses"


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "v"])
def test_each_model_family_is_guided(host, kind):
    baseline = host.generate(None, kind=kind).images
    on = host.generate(sega_values(warmup="0"), kind=kind)
    assert not torch.equal(on.images, baseline) and torch.isfinite(on.images).all()
    assert torch.equal(host.generate(sega_values(enabled=False), kind=kind).images, baseline)


def test_reversed_concept_moves_the_other_way(host):
    baseline = host.generate(None).images
    towards = host.generate(sega_values("smile", warmup="0")).images - baseline
    away = host.generate(sega_values("-smile", warmup="0")).images - baseline
    assert (towards * away).sum() < 0


def test_hires_fix_guides_both_passes_once(host):
    first_only = host.generate(sega_values(warmup="0", hires=False), enable_hr=True, hr_scale=1.5)
    both = host.generate(sega_values(warmup="0"), enable_hr=True, hr_scale=1.5)
    baseline = host.generate(None, enable_hr=True, hr_scale=1.5)
    assert not torch.equal(first_only.images, baseline.images)
    assert not torch.equal(both.images, first_only.images)
    assert host.reported == [] and both.comments == {}


def test_img2img_is_guided_and_off_is_identical(host):
    baseline = host.generate(None, img2img=True, denoising_strength=0.6).images
    off = host.generate(sega_values(enabled=False), img2img=True, denoising_strength=0.6).images
    on = host.generate(sega_values(warmup="0"), img2img=True, denoising_strength=0.6).images
    assert torch.equal(off, baseline) and not torch.equal(on, baseline)


@pytest.mark.parametrize("kind", ["sd1", "inpaint"])
def test_inpainting_leaves_the_kept_region_untouched(host, kind):
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1  # repaint the right half
    kwargs = dict(kind=kind, img2img=True, denoising_strength=0.75, mask=mask, init_images=init_latent(64, 64))
    baseline = host.generate(None, **kwargs).images
    on = host.generate(sega_values(warmup="0"), **kwargs).images
    assert torch.equal(on[..., :4], baseline[..., :4])
    assert not torch.equal(on[..., 4:], baseline[..., 4:])


def test_bad_input_is_named_and_the_next_generation_is_clean(host):
    bad = host.generate(sega_values(warmup="nonsense"))
    assert any("SEGA off" in c and "warmup" in c.lower() for c in bad.comments)
    assert "SEGA concepts" not in bad.p.extra_generation_params
    baseline = host.generate(None).images
    assert torch.equal(bad.images, baseline)
    assert not torch.equal(host.generate(sega_values()).images, baseline)


def test_an_engine_failure_stops_sega_and_says_so(host, monkeypatch):
    host_harness.fail_engine_step_at(monkeypatch, 3)
    result = host.generate(sega_values(warmup="0"))
    assert any(c.startswith("SEGA stopped: an error") for c in result.comments)
    assert "SEGA stopped" in result.p.extra_generation_params
    monkeypatch.undo()
    baseline = host.generate(None).images
    assert torch.equal(host.generate(sega_values(enabled=False)).images, baseline)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])
def test_editing_a_photo_reconstructs_it_with_no_concept_and_edits_it_with_one(host, sampler):
    photo = init_latent(64, 64)
    kwargs = dict(img2img=True, denoising_strength=1.0, init_images=photo, sampler_name=sampler)
    host.w.host.edit.clear_cache()
    back = host.generate(sega_values("", invert=True), **kwargs)
    assert back.comments == {} and (back.images - photo).abs().max() < 1e-4
    edited = host.generate(sega_values("smile", invert=True, warmup="0"), **kwargs)
    assert edited.comments == {} and (edited.images - photo).abs().max() > 1e-2


def test_a_sampler_that_cannot_invert_says_so_and_runs_img2img_with_sega(host):
    result = host.generate(sega_values("smile", invert=True), img2img=True, denoising_strength=1.0,
                           init_images=init_latent(64, 64), sampler_name="Euler")
    assert any("was not inverted" in c for c in result.comments)


@pytest.mark.parametrize("mode", ["attention", "intersect"])
def test_a_masked_concept_acts_only_where_its_words_are_attended(host, mode):
    """QuadrantLDM: the concepts' words draw attention only in the top-left quadrant, and
    each latent block's output depends only on that block."""
    kwargs = dict(kind="quadrant", steps=6, width=128, height=128)
    values = dict(concepts="smile :: threshold=0.75\n-glasses :: threshold=0.75", warmup="0")
    none = host.generate(sega_values(scale=0.0, mask=mode, **values), **kwargs).images
    masked = host.generate(sega_values(mask=mode, **values), **kwargs)
    assert host.reported == [] and masked.comments == {}
    assert masked.p.extra_generation_params["SEGA mask"] == mode
    diff = (masked.images - none).abs()
    assert diff[..., :8, :8].max() > 1e-3
    diff[..., :8, :8] = 0
    assert diff.max() <= 1e-6


# What an inpaint mask does to an edit, repainting the left half. "only masked" repaints a
# 3 × 3 block instead: it samples the crop around it (5 × 5 with the padding) scaled up to the
# processing size and pastes it back, so its latents are that crop's, not the photo's.
_BLOCK = torch.zeros(8, 8)
_BLOCK[1:4, 1:4] = 1
MASKED_EDITS = {
    "whole picture": {},
    "mask blur": dict(mask_blur=1),
    "only masked": dict(mask=_BLOCK, inpaint_full_res=True, inpaint_full_res_padding=1),
    "inpainting model": dict(kind="inpaint"),
}
_a1111_masked_edits: dict = {}


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE", "DPM++ 2M SDE"])
@pytest.mark.parametrize("area", MASKED_EDITS)
def test_an_edit_with_an_inpaint_mask_gives_the_photo_back_and_a_concept_changes_only_the_repainted_region(
        host, sampler, area):
    """Issue 27: on Forge the repainted half came back as plain img2img would make it. With no
    concept acting the sampler must land on the photo's latents in the repainted region too,
    as it does on A1111 — the A1111 stand-in's result on the same tiny model is the reference."""
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    photo = init_latent(64, 64)
    kwargs = dict(img2img=True, denoising_strength=1.0, init_images=photo, sampler_name=sampler, mask=left, steps=6)
    kwargs.update(MASKED_EDITS[area])
    host.w.host.edit.clear_cache()
    back = host.generate(sega_values("glasses :: scale=0", invert=True, warmup="0"), **kwargs)
    assert back.comments == {} and host.reported == []
    assert (back.samples - back.p.init_latent).abs().max() < 1e-5
    if (sampler, area) not in _a1111_masked_edits:
        _a1111_masked_edits[sampler, area] = _host("a1111").generate(
            sega_values("glasses :: scale=0", invert=True, warmup="0"), **kwargs).images
    torch.testing.assert_close(back.images, _a1111_masked_edits[sampler, area], rtol=0, atol=1e-5)
    kept = back.p.mask_for_overlay == 0
    assert kept.any() and torch.equal(back.images[..., kept], photo[..., kept])
    edited = host.generate(sega_values("smile", invert=True, warmup="0"), **kwargs)
    assert edited.comments == {}
    assert torch.equal(edited.images[..., kept], photo[..., kept])
    assert (edited.images - back.images)[..., ~kept].abs().max() > 1e-3
