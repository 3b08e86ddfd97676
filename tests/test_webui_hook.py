"""SEGA inside the WebUI's sampling loop, driven through the stand-in host."""

from __future__ import annotations

import pytest
import torch
from host_harness import Host, fail_engine_step_at, sampler_frame_step, sega_values

K_SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "Heun", "DPM2", "LMS", "Restart"]
T_SAMPLERS = ["DDIM", "PLMS"]
STEPS = 6


def real_steps(sampler: str, steps: int = STEPS) -> int:
    # The WebUI's DDIM and PLMS loop over len(timesteps) - 1 sampler steps, with
    # timesteps = range(0, 1000, 1000 // steps): 19 for 20 steps, but 6 for 6.
    return len(range(0, 1000, 1000 // steps)) - 1 if sampler in ("DDIM", "PLMS") else steps


@pytest.fixture(scope="module")
def host():
    return Host()


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DDIM"])
def test_off_or_empty_is_bit_identical_to_no_extension(host, sampler):
    baseline = host.generate(None, sampler_name=sampler, batch_size=2).images
    off = host.generate(sega_values(enabled=False), sampler_name=sampler, batch_size=2)
    empty = host.generate(sega_values(concepts="# nothing\n"), sampler_name=sampler, batch_size=2)
    assert torch.equal(off.images, baseline) and torch.equal(empty.images, baseline)
    assert off.extra_generation_params == {} and empty.extra_generation_params == {}
    on = host.generate(sega_values(), sampler_name=sampler, batch_size=2)
    assert not torch.equal(on.images, baseline)
    assert host.reported == []


@pytest.mark.parametrize("sampler", K_SAMPLERS + T_SAMPLERS)
def test_each_call_is_counted_in_its_sampler_step(host, sampler):
    seen = []

    def spy(params):
        record = host.w.host._current.record
        seen.append((sampler_frame_step(), None if record is None else record.step))

    with host.callback("cfg_denoiser", spy):
        host.generate(sega_values(warmup="2"), sampler_name=sampler)
    assert seen and all(truth == ours for truth, ours in seen), seen
    assert host.reported == []


@pytest.mark.parametrize("sampler", K_SAMPLERS + T_SAMPLERS)
def test_warmup_starts_at_the_asked_step(host, sampler):
    n = real_steps(sampler)
    baseline = host.generate(None, sampler_name=sampler).images
    late = host.generate(sega_values(warmup=str(n), momentum_scale=0.0), sampler_name=sampler).images
    assert torch.equal(late, baseline)

    with host.guided_steps() as guided:
        last = host.generate(sega_values(warmup=str(n - 1), momentum_scale=0.0), sampler_name=sampler).images
    assert not torch.equal(last, baseline)
    assert min(guided) == n - 1


def test_warmup_percentages_follow_the_pass(host):
    guided = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.term is not None and record.term.abs().max() > 0:
            guided.append((host.w.host._current.record.pass_.steps, record.step))

    with host.callback("cfg_denoised", spy):
        host.generate(sega_values(warmup="50%", momentum_scale=0.0), sampler_name="Euler", steps=8,
                      enable_hr=True, hr_second_pass_steps=4, denoising_strength=0.6)
    first = {}
    for steps, step in guided:
        first.setdefault(steps, step)
    # 8 steps → step 4; the hires pass runs its 4 steps (t_enc + 1) → step 2.
    assert first == {8: 4, 4: 2}


# ---- the host's other paths ------------------------------------------------------------------


def _records(host, run):
    """(result, [(cond_rows, active, batch, rows seen by the model)] per call)."""
    calls = []

    def denoiser_spy(params):
        record = host.w.host._current.record
        calls.append(None if record is None else [record.cond_rows, record.active, record.batch, params.x.shape[0]])

    with host.callback("cfg_denoiser", denoiser_spy):
        result = run()
    return result, calls


@pytest.mark.parametrize(
    "case, p_kwargs, kind",
    [
        ("batch of 3", dict(batch_size=3), "sd1"),
        ("batch count 2", dict(n_iter=2, batch_size=2), "sd1"),
        ("AND prompt", dict(prompt="a face AND a hat :0.7", batch_size=2), "sd1"),
        ("negative prompt", dict(negative_prompt="blurry, low quality"), "sd1"),
        ("long prompt, short concept", dict(prompt="a photo of a face " * 12), "sd1"),
        ("SDXL dict conds", dict(batch_size=2), "sdxl"),
        ("v-prediction", dict(), "v"),
        ("v-prediction DDIM", dict(sampler_name="DDIM"), "v"),
    ],
)
def test_host_paths_apply_sega(host, case, p_kwargs, kind):
    baseline = host.generate(None, kind=kind, **p_kwargs).images
    result, calls = _records(host, lambda: host.generate(sega_values(warmup="1"), kind=kind, **p_kwargs))
    assert host.reported == []
    b = p_kwargs.get("batch_size", 1)
    for i in range(b * p_kwargs.get("n_iter", 1)):
        assert not torch.equal(result.images[i], baseline[i]), f"image {i} unchanged"
    guided = [c for c in calls if c is not None and c[1]]
    assert guided
    rows_per_image = 2 if "AND" in case else 1
    for cond_rows, active, batch, model_rows in guided:
        assert batch == b and cond_rows == rows_per_image * b
        assert model_rows == cond_rows + (len(active) + 1) * b


def test_short_prompt_long_concept(host):
    long_concept = "smiling, a big happy smile, " * 12
    result, calls = _records(host, lambda: host.generate(sega_values(long_concept, warmup="1")))
    assert host.reported == []
    assert any(c and c[1] for c in calls)
    assert not torch.equal(result.images, host.generate(None).images)


@pytest.mark.parametrize("option", ["batch_cond_uncond", "pad_cond_uncond", "pad_cond_uncond_v0"])
def test_chunked_and_padded_evaluation(host, option):
    opts = host.w.shared.opts
    kwargs = dict(batch_size=2, negative_prompt="blurry " * 40)  # uncond longer than cond
    try:
        setattr(opts, option, option != "batch_cond_uncond")
        baseline = host.generate(None, **kwargs).images
        result = host.generate(sega_values(warmup="1"), **kwargs).images
    finally:
        opts.reset()
    assert host.reported == []
    assert not torch.equal(result, baseline)
    # The chunked path must give the same SEGA as the batched one, up to float rounding.
    batched = host.generate(sega_values(warmup="1"), **kwargs).images
    if option == "batch_cond_uncond":
        torch.testing.assert_close(result, batched, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("option, value", [("skip_early_cond", 0.4), ("s_min_uncond", 3.0)])
def test_steps_without_uncond_get_no_rows(host, option, value):
    opts = host.w.shared.opts
    kwargs = {"s_min_uncond": value} if option == "s_min_uncond" else {}
    try:
        if option == "skip_early_cond":
            opts.skip_early_cond = value
        result, calls = _records(host, lambda: host.generate(sega_values(warmup="0"), steps=8, **kwargs))
    finally:
        opts.reset()
    assert host.reported == []
    skipped = [c for c in calls if c is None]
    assert skipped and len(skipped) < len(calls)
    assert not torch.equal(result.images, host.generate(None, steps=8).images)


def test_hires_pass_option(host):
    kwargs = dict(enable_hr=True, hr_second_pass_steps=3, denoising_strength=0.5, kind="sdxl")
    _, with_hires = _records(host, lambda: host.generate(sega_values(warmup="0"), **kwargs))
    _, without = _records(host, lambda: host.generate(sega_values(warmup="0", hires=False), **kwargs))
    assert host.reported == []
    first_pass = STEPS
    assert all(c is not None for c in with_hires)
    assert all(c is not None for c in without[:first_pass]) and all(c is None for c in without[first_pass:])
    assert len(without) > first_pass


def test_hires_concepts_are_encoded_for_the_hires_size(host):
    sizes = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.active:
            concept_vector = params.text_cond["vector"][record.cond_rows]
            sizes.append(tuple(concept_vector[-2:].tolist()))

    with host.callback("cfg_denoiser", spy):
        host.generate(sega_values(warmup="0"), kind="sdxl", width=64, height=96, enable_hr=True, hr_scale=2.0,
                      hr_second_pass_steps=2, denoising_strength=0.5)
    assert sizes[0] == (64 / 1024, 96 / 1024) and sizes[-1] == (128 / 1024, 192 / 1024)


def test_concept_prompt_syntax_goes_through_the_host(host):
    conds = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.active:
            conds.append(params.text_cond[record.cond_rows].clone())

    with host.callback("cfg_denoiser", spy):
        host.generate(sega_values("[smile:frown:3] BREAK glasses", warmup="0", momentum_scale=0.0), steps=6)
    assert conds[0].shape[0] == 154  # BREAK makes a second 77-token chunk
    assert not torch.equal(conds[0], conds[-1])  # the schedule switched
    assert torch.equal(conds[0], conds[3]) and torch.equal(conds[4], conds[5])


# ---- nothing survives a generation --------------------------------------------------------------


@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
def test_interrupt_or_skip_then_normal_generation_is_clean(host, flag):
    fresh = host.generate(sega_values(), sampler_name="Heun").images

    def interrupt(params):
        if params.denoiser.step == 3:
            setattr(host.w.shared.state, flag, True)

    with host.callback("cfg_denoiser", interrupt):
        host.generate(sega_values(), sampler_name="Heun", n_iter=2)
    again = host.generate(sega_values(), sampler_name="Heun").images
    assert torch.equal(again, fresh)


def test_failure_inside_a_callback_then_normal_generation_is_clean(host, monkeypatch):
    fresh = host.generate(sega_values()).images
    fail_engine_step_at(monkeypatch, 3)
    broken = host.generate(sega_values())
    assert host.reported == []  # caught by SEGA itself, so that it can tell the user
    assert any("SEGA stopped" in c and "boom" in c for c in broken.comments)
    assert "boom" in broken.extra_generation_params["SEGA stopped"]  # acted in steps 0-1
    assert "SEGA concepts" in broken.extra_generation_params
    assert broken.images is not None and not torch.equal(broken.images, fresh)
    monkeypatch.undo()
    assert torch.equal(host.generate(sega_values()).images, fresh)


def test_state_lives_on_p_only(host):
    result = host.generate(sega_values())
    assert getattr(result.p, "sega_run", None) is None  # cleared by postprocess
    assert host.w.host._current.record is None


# ---- declines ---------------------------------------------------------------------------------


def test_edit_models_decline_with_a_comment(host):
    m = host.w.shared.sd_model
    from host_harness import model

    edit = model("sd1")
    edit.cond_stage_key = "edit"
    try:
        baseline = host.generate(None, image_cfg_scale=1.5).images
        result = host.generate(sega_values(), image_cfg_scale=1.5)
    finally:
        edit.cond_stage_key = "txt"
    assert m is not None
    assert torch.equal(result.images, baseline)
    assert any(c.startswith("SEGA off: edit models (InstructPix2Pix)") for c in result.comments)


def test_bad_args_are_commented_and_the_image_is_plain(host):
    baseline = host.generate(None).images
    result = host.generate(sega_values("x :: scle=3"))
    assert torch.equal(result.images, baseline)
    assert list(result.comments) == [
        "SEGA off (concepts): line 1 (x :: scle=3): unknown key 'scle' — did you mean 'scale'?"
    ]
    mixed = host.generate(sega_values("x :: warmup=50% cooldown=2"))
    assert torch.equal(mixed.images, baseline)
    assert list(mixed.comments) == [
        "SEGA off (concepts[1]): cooldown (2 = step 2) must come after warmup (50% = step 3) at 6 steps for 'x'"
    ]
