"""Editing a photo in ComfyUI (sega_comfy/edit.py) in the ComfyUI 0.8.0 stand-in: the photo
back from every stochastic sampler at any strength and seed, the concepts changing it, the
kept region of an inpaint untouched, a flow model at CFG 1 with FluxGuidance, the
SamplerCustomAdvanced path, the cached inversion, progress and interrupt, bad input."""

from __future__ import annotations

import logging

import comfy_host as host
import pytest
import torch

from sega_comfy import edit as sega_edit
from sega_comfy.nodes import NODE_CLASS_MAPPINGS, SegaGuidanceNode

SAMPLERS = list(sega_edit.EDIT_SAMPLERS)


def photo(batch: int = 2, channels: int = 4, size: int = 8, seed: int = 5) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn((batch, channels, size, size), generator=generator) * 0.8}


def invert(model, clip, latent, sampler="dpmpp_2m_sde", denoise=1.0, seed=3, steps=6, cfg=7.0, positive=None):
    positive = positive or host.encode(clip, "a photo of a man")
    with torch.no_grad():
        return sega_edit.SegaInvertNode().invert(model, positive, host.encode(clip, ""), latent, seed, steps, cfg,
                                                 sampler, "normal", denoise)[0]


def edit(model, clip, inversion, cfg=7.0, positive=None):
    positive = positive or host.encode(clip, "a photo of a man")
    with torch.no_grad():
        return sega_edit.SegaEditNode().edit(model, positive, host.encode(clip, ""), cfg, inversion)[0]["samples"]


def sega(model, clip, concepts, **settings):
    values = {**dict(scale=5.0, threshold=0.95, warmup="0", cooldown="", weight=1.0, momentum_scale=0.3,
                     momentum_beta=0.6), **settings}
    return SegaGuidanceNode().apply(model, clip, concepts, **values)[0]


def test_the_edit_nodes_are_registered():
    assert {"SEGAInvert", "SEGAEdit", "SEGAInversionSampler"} <= set(NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("denoise, seed", [(1.0, 3), (0.6, 11)])
def test_with_no_concept_acting_the_edit_is_the_photo(sampler, denoise, seed):
    model, clip = host.checkpoint("sd1")
    latent = photo()
    inversion = invert(model, clip, latent, sampler, denoise, seed)
    assert (edit(model, clip, inversion) - latent["samples"]).abs().max() < 1e-6
    # The SEGA model with a concept that never acts (warm-up past the last step): the same.
    idle = sega(model, clip, "smiling", warmup="100", momentum_scale=0.0)
    assert (edit(idle, clip, inversion) - latent["samples"]).abs().max() < 1e-6


def test_plain_img2img_is_far_from_the_photo_and_the_concepts_change_the_edit_deterministically():
    model, clip = host.checkpoint("sd1")
    latent = photo()
    with torch.no_grad():
        plain = host.txt2img(model, clip, "a photo of a man", seed=3, sampler="dpmpp_2m_sde", start=latent,
                             denoise=1.0)
    assert (plain - latent["samples"]).abs().max() > 0.5
    inversion = invert(model, clip, latent)
    guided = sega(model, clip, "smiling")
    first = edit(guided, clip, inversion)
    assert (first - latent["samples"]).abs().max() > 1e-2
    assert torch.equal(edit(guided, clip, inversion), first)


def test_the_inversion_is_made_once_and_each_edit_only_samples_again():
    """ComfyUI keeps the inversion node's output: an edit with other concepts re-runs the edit
    node only, which makes the sampling pass's calls and no inversion calls."""
    model, clip = host.checkpoint("sd1")
    inversion = invert(model, clip, photo(), "euler_ancestral", steps=5)
    host.calls(model).clear()
    edit(sega(model, clip, "smiling", momentum_scale=0.0), clip, inversion)
    edit(sega(model, clip, "glasses", momentum_scale=0.0), clip, inversion)
    assert host.calls(model) == [2 * (2 + 1)] * 5 * 2  # two edits of 5 steps, (2 + K)·B rows each
    assert inversion.inversion.model_calls == 5
    assert 0 < inversion.mebibytes < 1


def test_an_inpaint_keeps_the_region_the_mask_keeps_untouched():
    model, clip = host.checkpoint("sd1")
    latent = photo(batch=1)
    mask = torch.zeros((1, 1, 8, 8))
    mask[..., :4] = 1.0  # repaint the left half
    masked = {**latent, "noise_mask": mask}
    inversion = invert(model, clip, masked)
    assert (edit(model, clip, inversion) - latent["samples"]).abs().max() < 1e-6
    changed = edit(sega(model, clip, "smiling"), clip, inversion)
    assert torch.equal(changed[..., 4:], latent["samples"][..., 4:])
    assert (changed[..., :4] - latent["samples"][..., :4]).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", sega_edit.FLOW_SAMPLERS)
def test_a_flow_model_at_cfg_1_with_flux_guidance_comes_back_and_takes_the_concepts(sampler):
    model, clip = host.checkpoint("flux")
    positive = host.flux_positive(clip, "a photo of a man", guidance=2.5)
    latent = photo(batch=1)
    inversion = invert(model, clip, latent, sampler, cfg=1.0, positive=positive)
    assert inversion.flow
    assert (edit(model, clip, inversion, cfg=1.0, positive=positive) - latent["samples"]).abs().max() < 1e-5
    changed = edit(sega(model, clip, "smiling", scale=1.5), clip, inversion, cfg=1.0, positive=positive)
    assert (changed - latent["samples"]).abs().max() > 1e-3


def test_a_flow_model_refuses_a_sampler_it_has_no_rectified_flow_variant_of():
    model, clip = host.checkpoint("flux")
    with pytest.raises(ValueError, match="euler_ancestral and dpm_2_ancestral; dpmpp_2m_sde has none"):
        invert(model, clip, photo(batch=1), "dpmpp_2m_sde", cfg=1.0)


def test_sampler_custom_advanced_replays_the_inversion_with_basic_guider():
    from comfy_extras.nodes_custom_sampler import Guider_Basic, sample_custom

    model, clip = host.checkpoint("flux")
    positive = host.flux_positive(clip, "a photo of a man", guidance=3.5)
    latent = photo(batch=1)
    inversion = invert(model, clip, latent, "euler_ancestral", cfg=1.0, positive=positive)
    noise, sampler, sigmas = sega_edit.SegaInversionSamplerNode().unpack(inversion)

    def run(m, start):
        guider = Guider_Basic(m)
        guider.set_conds(positive)
        with torch.no_grad():
            return sample_custom(noise.generate_noise(start), guider, sampler, sigmas, start, noise.seed)["samples"]

    assert (run(model, latent) - latent["samples"]).abs().max() < 1e-5
    assert (run(sega(model, clip, "smiling", scale=1.5), latent) - latent["samples"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="the inverted photo's is"):
        noise.generate_noise(photo(batch=1, size=16))


def test_another_photo_than_the_one_inverted_is_a_clear_error(caplog):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import sample_custom

    model, clip = host.checkpoint("sd1")
    inversion = invert(model, clip, photo(), denoise=0.6)
    noise, sampler, sigmas = sega_edit.SegaInversionSamplerNode().unpack(inversion)
    guider = comfy.samplers.CFGGuider(sega(model, clip, "smiling"))
    guider.set_conds(host.encode(clip, "a photo of a man"), host.encode(clip, ""))
    guider.set_cfg(7.0)
    other = photo(seed=99)
    with caplog.at_level(logging.WARNING, logger="sd-webui-sega"):
        with pytest.raises(ValueError, match="not the photo that was inverted .another latent of the same shape"), \
                torch.no_grad():
            sample_custom(noise.generate_noise(other), guider, sampler, sigmas, other, noise.seed)
    assert not [r for r in caplog.records if "did not act" in r.getMessage()]  # the error says why, alone


def test_a_deterministic_sampler_is_refused_naming_the_ones_that_work():
    message = sega_edit.SegaInvertNode.VALIDATE_INPUTS(sampler_name="euler")
    assert message.startswith("sampler_name: euler adds no noise") and "euler_ancestral, dpm_2_ancestral" in message
    assert sega_edit.SegaInvertNode.VALIDATE_INPUTS(sampler_name="dpmpp_sde") is True


def test_the_inversion_reports_progress_and_an_interrupt_leaves_the_next_run_clean():
    import comfy.model_management as mm
    import latent_preview

    model, clip = host.checkpoint("sd1")
    latent = photo()
    latent_preview.STEPS.clear()
    reference = invert(model, clip, latent, "euler_ancestral", steps=5)
    assert latent_preview.STEPS == [0, 1, 2, 3, 4]
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        invert(model, clip, latent, "euler_ancestral", steps=5)
    again = invert(model, clip, latent, "euler_ancestral", steps=5)
    assert all(torch.equal(a, b) for a, b in zip(again.inversion.noises, reference.inversion.noises, strict=True))
    assert (edit(model, clip, again) - latent["samples"]).abs().max() < 1e-6


def test_the_inversion_runs_without_the_sega_node_it_is_given():
    model, clip = host.checkpoint("sd1")
    latent = photo()
    through_sega = invert(sega(model, clip, "smiling"), clip, latent)
    plain = invert(model, clip, latent)
    assert all(torch.equal(a, b) for a, b in zip(through_sega.inversion.noises, plain.inversion.noises, strict=True))


def test_sd3_comes_back_through_its_rectified_flow_sampler_and_takes_the_concepts():
    model, clip = host.checkpoint("sd3")
    latent = photo(batch=1)
    inversion = invert(model, clip, latent, "euler_ancestral", cfg=5.0)
    assert inversion.flow
    assert (edit(model, clip, inversion, cfg=5.0) - latent["samples"]).abs().max() < 1e-5
    assert (edit(sega(model, clip, "smiling"), clip, inversion, cfg=5.0) - latent["samples"]).abs().max() > 1e-3
