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


# ---- implicit masks on the WebUI's MMDiT (joint attention, sega_webui/joint_attention.py) ----

MMDIT = dict(sampler_name="Euler", steps=4, width=128, height=128)  # an 8 × 8 patch grid


@pytest.mark.parametrize("kind", ["sd3mm", "sd3mm-t5"])
def test_mmdit_masks_equal_an_explicit_softmax_over_the_joint_attention(host, kind, monkeypatch):
    """M¹ on SD3: the image queries' softmax over [context; image] keys, at the concepts'
    token columns (CLIP's, and T5's behind them when T5 is on), summed over heads, averaged
    over joint blocks 1 and 2 of 4 — computed here from the q and k the model's own
    attention receives, for the concept rows of the WebUI's widened call."""
    from modules.models.sd3 import mmdit

    from sega_webui import joint_attention

    calls, collected = [], []
    real_attention, real_collect = mmdit.attention, joint_attention.JointAttention.collect

    def attention(q, k, v, heads):
        b, n, dim = q.shape
        calls.append(tuple(t.view(b, n, heads, dim // heads).transpose(1, 2).double() for t in (q, k)))
        return real_attention(q, k, v, heads)

    def collect(self, grid):
        out = real_collect(self, grid)
        collected.append((out.clone(), list(calls[-4:])))
        return out

    monkeypatch.setattr(mmdit, "attention", attention)
    monkeypatch.setattr(joint_attention.JointAttention, "collect", collect)
    records = []
    with host.callback("cfg_denoiser", lambda params: records.append(host.w.host._current.record)):
        result = host.generate(sega_values("smile\n-glasses", warmup="0", mask="attention"), kind=kind, batch_size=2,
                               **MMDIT)
    assert host.reported == [] and list(result.comments) == []
    assert result.p.extra_generation_params["SEGA mask"] == "attention"
    assert len(collected) == 4
    ldm = host_harness_model(kind)
    columns = torch.zeros(4, 154, dtype=torch.float64)
    for i, text in enumerate(["smile", "glasses"]):
        n = len(ldm.tokenizer(text, add_special_tokens=False).input_ids)
        columns[2 * i : 2 * i + 2, 1 : 1 + n] = 1.0  # CLIP: after the start token
        if kind == "sd3mm-t5":
            columns[2 * i : 2 * i + 2, 77 : 77 + n] = 1.0  # T5: no start token
    for (maps, blocks), record in zip(collected[1:], records[1:], strict=True):
        r = record.cond_rows  # the widened call: prompt rows, concept rows, uncond rows
        total, heads = 0, 0
        for q, k in blocks[1:3]:
            q, k = q[r : r + 4], k[r : r + 4]
            probs = (q[:, :, 154:] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(dim=-1)[..., :154]
            total = total + torch.einsum("rhqt,rt->rq", probs, columns)
            heads += q.shape[1]
        torch.testing.assert_close(maps.double(), (total / heads).view(4, 8, 8), rtol=1e-4, atol=1e-6)
    assert maps.std() > 1e-4


def host_harness_model(kind):
    import host_harness

    return host_harness.model(kind)


def test_mmdit_masks_act_and_off_is_bit_identical(host):
    baseline = host.generate(None, kind="sd3mm", **MMDIT).images
    assert torch.equal(host.generate(sega_values(enabled=False, mask="intersect"), kind="sd3mm", **MMDIT).images,
                       baseline)
    plain = host.generate(sega_values(warmup="0"), kind="sd3mm", **MMDIT)
    masked = host.generate(sega_values(warmup="0", mask="intersect"), kind="sd3mm", **MMDIT)
    assert host.reported == [] and list(masked.comments) == []
    assert not torch.equal(masked.images, plain.images) and not torch.equal(masked.images, baseline)
    none = host.generate(sega_values(warmup="0", mask="intersect", scale=0.0), kind="sd3mm", **MMDIT).images
    # Reading the attention changes nothing by itself (the wider call may round differently).
    torch.testing.assert_close(none, baseline, rtol=1e-4, atol=1e-4)


def test_mmdit_intersect_uses_the_attention_mask_alone_above_timestep_800(host, monkeypatch):
    from sega.guidance import SegaGuidance

    seen = []
    real = SegaGuidance.step

    def step(self, s, uncond, concepts, *args, early=None, **kwargs):
        seen.append(early)
        return real(self, s, uncond, concepts, *args, early=early, **kwargs)

    monkeypatch.setattr(SegaGuidance, "step", step)
    sigmas = []
    with host.callback("cfg_denoiser", lambda params: sigmas.append(float(params.sigma[0]))):
        host.generate(sega_values(warmup="0", mask="intersect"), kind="sd3mm", **{**MMDIT, "steps": 6})
    assert [bool(e.all()) for e in seen] == [s > 0.8 for s in sigmas]
    assert True in [s > 0.8 for s in sigmas] and False in [s > 0.8 for s in sigmas]
