"""SEGA on an SD3-shaped checkpoint (tests/tiny_models.TinySD3): dict conds with CLIP and T5
halves on the token axis, 16 latent channels, a flow-matching model behind its own
k-diffusion denoiser. The WebUI's timestep samplers cannot run SD3 correctly; SEGA is off there."""

from __future__ import annotations

import pytest
import torch
from host_harness import Host, init_latent, sampler_frame_step, sega_values

K_SAMPLERS = ["Euler", "Euler a", "Heun", "DPM++ 2M", "DPM++ SDE", "DPM2", "LMS", "Restart", "DPM fast"]
T_SAMPLERS = ["DDIM", "PLMS", "UniPC"]


@pytest.fixture(scope="module")
def host():
    return Host()


def same(a, b) -> bool:
    # The timestep samplers drive SD3 off its range; compare what they make bit for bit, NaNs too.
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("kind", ["sd3", "sd3-t5"])
@pytest.mark.parametrize("sampler", K_SAMPLERS)
def test_off_is_bit_identical_and_on_changes_the_image(host, kind, sampler):
    kwargs = dict(kind=kind, sampler_name=sampler, steps=4, batch_size=2)
    baseline = host.generate(None, **kwargs).images
    assert baseline.shape[1] == 16
    off = host.generate(sega_values(enabled=False), **kwargs).images
    assert torch.equal(off, baseline)
    on = host.generate(sega_values(warmup="1"), **kwargs)
    assert host.reported == [] and list(on.comments) == []
    assert torch.isfinite(on.images).all()
    for i in range(2):
        assert not torch.equal(on.images[i], baseline[i])
    assert torch.equal(host.generate(sega_values(warmup="1"), **kwargs).images, on.images)


@pytest.mark.parametrize("sampler", T_SAMPLERS)
def test_timestep_samplers_leave_sega_off_with_the_reason(host, sampler):
    baseline = host.generate(None, kind="sd3", sampler_name=sampler, steps=4).images
    result = host.generate(sega_values(), kind="sd3", sampler_name=sampler, steps=4)
    assert same(result.images, baseline)
    reason = result.extra_generation_params["SEGA off"]
    assert reason.startswith("the WebUI runs SD3 correctly only with its k-diffusion samplers")
    assert "SEGA concepts" not in result.extra_generation_params
    assert list(result.comments) == [f"SEGA off: {reason}"]


def test_sega_term_matches_a_hand_computation_in_eps_space(host):
    """ε = (x − (1 − σ)·x0)/σ for every estimate, SEGA as the reference defines it on ε, the
    result mapped back: x0' = x0 − σ/(1 − σ)·γ."""
    scale, threshold, mom_scale, beta = 4.0, 0.8, 0.5, 0.6
    calls = []

    def before(params):  # cfg_after_cfg, before SEGA's
        calls[-1]["guided"] = params.x.clone()

    def after(params):  # cfg_after_cfg, after SEGA's
        calls[-1]["result"] = params.x.clone()

    def denoised(params):  # cfg_denoised, after SEGA's
        record = host.w.host._current.record
        r, b = record.cond_rows, record.batch
        calls.append(dict(x=record.x.clone(), sigma=record.sigma.clone(), step=record.step,
                          uncond=params.x[-b:].clone(), concept=params.x[r:r + b].clone()))

    values = sega_values("smile", warmup="0", scale=scale, threshold=threshold,
                         momentum_scale=mom_scale, momentum_beta=beta)
    with host.callback("cfg_denoised", denoised), host.callback("cfg_after_cfg", before, first=True), \
            host.callback("cfg_after_cfg", after):
        host.generate(values, kind="sd3-t5", sampler_name="Euler", steps=5, batch_size=2)
    assert host.reported == [] and [c["step"] for c in calls] == list(range(5))

    momentum = torch.zeros_like(calls[0]["x"], dtype=torch.float64)
    changed = 0
    for call in calls:
        x, s = call["x"].double(), call["sigma"].double().view(-1, 1, 1, 1)
        eps_u = (x - (1 - s) * call["uncond"].double()) / s
        eps_c = (x - (1 - s) * call["concept"].double()) / s
        psi = scale * (eps_c - eps_u)
        flat = psi.flatten(2)
        q = torch.quantile(flat.abs(), threshold, dim=2, keepdim=True)
        psi = torch.where(flat.abs() >= q, flat, torch.zeros_like(flat)).view_as(psi)
        gamma = psi + mom_scale * momentum
        momentum = beta * momentum + (1 - beta) * gamma
        if bool((s == 1).all()):  # the first step: every ε is x, nothing to add
            assert torch.equal(call["result"], call["guided"])
            continue
        expected = call["guided"].double() - s / (1 - s) * gamma
        torch.testing.assert_close(call["result"].double(), expected, rtol=1e-4, atol=1e-4)
        changed += not torch.equal(call["result"], call["guided"])
    assert changed == 4


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM2", "DPM++ 2M", "Restart"])
def test_steps_are_counted_exactly(host, sampler):
    seen = []

    def spy(params):
        record = host.w.host._current.record
        seen.append((sampler_frame_step(), None if record is None else record.step))

    with host.callback("cfg_denoiser", spy):
        host.generate(sega_values(warmup="1"), kind="sd3", sampler_name=sampler, steps=5)
    assert seen and all(truth == ours for truth, ours in seen), seen
    baseline = host.generate(None, kind="sd3", sampler_name=sampler, steps=5).images
    late = host.generate(sega_values(warmup="5", momentum_scale=0.0), kind="sd3", sampler_name=sampler, steps=5)
    assert torch.equal(late.images, baseline)
    with host.guided_steps() as guided:
        last = host.generate(sega_values(warmup="4", momentum_scale=0.0), kind="sd3", sampler_name=sampler, steps=5)
    assert set(guided) == {4} and not torch.equal(last.images, baseline)


@pytest.mark.parametrize("kind", ["sd3", "sd3-t5"])
def test_concept_conds_have_the_clip_and_t5_halves(host, kind):
    seen = []

    def spy(params):  # cfg_denoiser, after SEGA's
        record = host.w.host._current.record
        if record is not None and record.active:
            seen.append(params.text_cond["crossattn"][record.cond_rows].clone())

    with host.callback("cfg_denoiser", spy):
        host.generate(sega_values("smile BREAK glasses", warmup="0"), kind=kind, steps=3)
    assert host.reported == []
    cond = seen[0]
    assert cond.shape == (2 * 154, 48)  # two 77-token CLIP chunks, then as many T5 tokens
    clip, t5 = cond[:154], cond[154:]
    assert torch.count_nonzero(clip[:, :40]) > 0 and torch.count_nonzero(clip[:, 40:]) == 0
    assert (torch.count_nonzero(t5) > 0) == (kind == "sd3-t5")


def test_a_concept_longer_than_the_prompt_pads_the_prompt_with_empty_halves(host):
    seen = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.active:
            seen.append(params.text_cond["crossattn"][: record.batch].clone())

    baseline = host.generate(None, kind="sd3", steps=3).images
    with host.callback("cfg_denoiser", spy):
        result = host.generate(sega_values("smile BREAK glasses", warmup="0"), kind="sd3", steps=3)
    assert host.reported == [] and not torch.equal(result.images, baseline)
    empty = host.w.shared.sd_model.cond_stage_model_empty_prompt[0]
    assert seen[0].shape[1] == 308 and torch.equal(seen[0][0, 154:], empty)


@pytest.mark.parametrize("mask", [False, True])
def test_img2img_and_inpainting(host, mask):
    kwargs = dict(kind="sd3", img2img=True, steps=6, denoising_strength=0.6,
                  init_images=init_latent().repeat(1, 4, 1, 1))
    if mask:
        m = torch.zeros(8, 8)
        m[:, :4] = 1
        kwargs["mask"] = m
    baseline = host.generate(None, **kwargs).images
    assert torch.equal(host.generate(sega_values(enabled=False), **kwargs).images, baseline)
    on = host.generate(sega_values(warmup="0"), **kwargs)
    assert host.reported == [] and not torch.equal(on.images, baseline)
    if mask:  # nothing moves where the mask keeps the image
        assert torch.equal(on.images[..., 4:], baseline[..., 4:])


def test_guidance_maps_with_16_channels(host):
    off = host.generate(sega_values(warmup="1"), kind="sd3", steps=4, batch_size=2, pil_images=True)
    on = host.generate(sega_values(warmup="1", show_maps=True), kind="sd3", steps=4, batch_size=2,
                       pil_images=True)
    assert host.reported == []
    extra = on.images[len(off.images):]
    assert len(extra) == 2 * 3  # per image: one picture per concept, then both together
    assert all(picture.info["SEGA map"].startswith("SEGA map: ") for picture in extra)
    assert not any("did not act" in picture.info["SEGA map"] for picture in extra)


def test_hires_fix(host):
    kwargs = dict(kind="sd3", steps=4, enable_hr=True, hr_second_pass_steps=3, denoising_strength=0.5)
    baseline = host.generate(None, **kwargs).images
    with host.guided_steps() as guided:
        on = host.generate(sega_values(warmup="0", momentum_scale=0.0), **kwargs)
    assert host.reported == [] and not torch.equal(on.images, baseline)
    assert guided.count(0) == 1  # the hires pass starts below σ = 1, the first pass at it
