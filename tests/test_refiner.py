"""SEGA through the refiner switch, with the stand-in's copy of WebUI 1.10.1's `apply_refiner`:
the checkpoint is loaded mid-pass (into the same object for the same architecture), the
prompt re-encoded, the denoiser's model dropped, all before SEGA's first callback."""

from __future__ import annotations

import contextlib

import pytest
import torch
from host_harness import Host, checkpoint, sampler_frame_step, sega_values

PROMPT = "a photo of a face"
# Checkpoint pairs: the same architecture (one object, weights reloaded), SDXL base and
# refiner, and SD 1.5 → SDXL (another object, another latent space).
PAIRS = {
    "sd15-sd15": (("base15", "sd1", 0), ("other15", "sd1", 10)),
    "sdxl-sdxl": (("basexl", "sdxl", 0), ("refinerxl", "sdxl", 10)),
    "sd15-sdxl": (("base15", "sd1", 0), ("refinerxl", "sdxl", 10)),
    "sd3-sd3": (("base3", "sd3", 0), ("other3", "sd3", 10)),
}


@pytest.fixture(scope="module")
def host():
    return Host()


def run(host, values, pair="sd15-sd15", switch_at=0.5, **kwargs):
    base, refiner = (checkpoint(*spec) for spec in PAIRS[pair])
    return host.generate(values, checkpoint=base, refiner_checkpoint=refiner, refiner_switch_at=switch_at, **kwargs)


def title():
    from modules import shared

    return shared.sd_model.sd_checkpoint_info.title


@contextlib.contextmanager
def options(**values):
    from modules import shared

    saved = {k: getattr(shared.opts, k, None) for k in values}
    for k, v in values.items():
        setattr(shared.opts, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(shared.opts, k, v)


@contextlib.contextmanager
def engine_steps(monkeypatch):
    """(engine, step, the momentum the call used, the momentum after it, checkpoint title) per
    engine call."""
    from sega.guidance import SegaGuidance

    seen = []
    real = SegaGuidance.step

    def spy(self, step, *a, **kw):
        out = real(self, step, *a, **kw)
        seen.append((id(self), step, self._momentum_before.clone(), self.momentum.clone(), title()))
        return out

    monkeypatch.setattr(SegaGuidance, "step", spy)
    yield seen
    monkeypatch.undo()


# ---- the concepts are the refiner's -------------------------------------------------------------


@pytest.mark.parametrize("pair, limit", [(pair, 1) for pair in PAIRS] + [("sdxl-sdxl", 2)])
@pytest.mark.parametrize("low_vram", [False, True])
def test_a_concept_equal_to_the_prompt_yields_the_prompts_estimate_after_the_switch(host, pair, limit, low_vram):
    calls = []

    def spy(params):  # cfg_denoised, after SEGA's own: the prompt's rows and the concept's estimate
        record = host.w.host._current.record
        if record is None or not record.active:
            return
        b = record.batch
        x0 = params.x[:b]
        if record.concept_rows is None:
            concept = params.x[record.cond_rows:record.cond_rows + b]
        else:
            concept = host.w.host.compat.evaluate_separately(record, params.inner_model, params.x)
        calls.append((title(), x0.clone(), concept.clone(), id(host.w.shared.sd_model)))

    with options(sega_low_vram=low_vram, sd_checkpoints_limit=limit), host.callback("cfg_denoised", spy):
        result = run(host, sega_values(PROMPT, warmup="0"), pair=pair, batch_size=2)
    assert host.reported == [] and "SEGA stopped" not in result.extra_generation_params
    refiner = PAIRS[pair][1][0]
    after = [c for c in calls if c[0] == refiner]
    assert after and len(after) < len(calls)  # SEGA went on past the switch
    # One architecture, one checkpoint in memory: the WebUI loads the refiner into the same object.
    one_object = limit == 1 and PAIRS[pair][0][1] == PAIRS[pair][1][1]
    assert len({c[3] for c in calls}) == (1 if one_object else 2)
    for _, prompt_x0, concept_x0, _ in calls:
        if low_vram:  # another batch layout, so equal up to rounding
            torch.testing.assert_close(concept_x0, prompt_x0, rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(concept_x0, prompt_x0)


def test_the_concepts_are_encoded_for_the_hires_size_after_a_switch_in_the_hires_pass(host):
    seen = []

    def spy(params):  # cfg_denoiser, after SEGA's: its concept rows against the prompt's
        record = host.w.host._current.record
        if record is not None and record.active and record.concept_rows is None:
            r, b = record.cond_rows, record.batch
            same = all(torch.equal(params.text_cond[k][r:r + b], params.text_cond[k][:b]) for k in ("crossattn", "vector"))
            seen.append((params.denoiser.p.is_hr_pass, title(), same, tuple(params.text_cond["vector"][r, -2:].tolist())))

    with options(hires_fix_refiner_pass="both passes"), host.callback("cfg_denoiser", spy):
        result = run(host, sega_values(PROMPT, warmup="0"), pair="sdxl-sdxl", enable_hr=True, hr_scale=2.0,
                     hr_second_pass_steps=4, denoising_strength=0.6, width=64, height=96)
    assert host.reported == [] and result.extra_generation_params["Hires refiner"] == "both passes"
    assert all(same for _, _, same, _ in seen)
    passes = {(hr, name, size) for hr, name, _, size in seen}
    assert passes == {
        (False, "basexl", (64 / 1024, 96 / 1024)), (False, "refinerxl", (64 / 1024, 96 / 1024)),
        (True, "basexl", (128 / 1024, 192 / 1024)), (True, "refinerxl", (128 / 1024, 192 / 1024)),
    }


@pytest.mark.parametrize("which, switched", [("first pass", {False}), ("second pass", {True}),
                                             ("both passes", {False, True})])
def test_hires_fix_refiner_pass_option(host, which, switched):
    refined = set()

    def denoiser_spy(params):
        if host.w.host._current.record is not None and title() == "refinerxl":
            refined.add(params.denoiser.p.is_hr_pass)

    with options(hires_fix_refiner_pass=which), host.callback("cfg_denoiser", denoiser_spy):
        result = run(host, sega_values(warmup="0"), pair="sdxl-sdxl", enable_hr=True, hr_second_pass_steps=4,
                     denoising_strength=0.6, batch_size=2)
    assert refined == switched  # SEGA guided every pass the refiner ran in
    assert host.reported == [] and not {"SEGA stopped", "SEGA off"} & set(result.extra_generation_params)


# ---- one pass, one engine: steps, warm-up and momentum go on ----------------------------------------


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M", "DPM2", "DDIM", "PLMS"])
def test_steps_are_counted_through_the_switch(host, sampler):
    seen = []

    def spy(params):
        record = host.w.host._current.record
        seen.append((title(), sampler_frame_step(), None if record is None else record.step))

    with host.callback("cfg_denoiser", spy):
        run(host, sega_values(warmup="1"), sampler_name=sampler, steps=8)
    assert host.reported == []
    assert {name for name, _, _ in seen} == {"base15", "other15"}
    assert all(truth == ours for _, truth, ours in seen), seen


@pytest.mark.parametrize("pair, carried", [("sd15-sd15", True), ("sdxl-sdxl", True), ("sd15-sdxl", False),
                                           ("sd3-sd3", True)])
@pytest.mark.parametrize("sampler", ["Euler", "Heun"])
def test_momentum_at_the_switch(host, monkeypatch, pair, carried, sampler):
    with engine_steps(monkeypatch) as seen:
        result = run(host, sega_values(warmup="0", momentum_scale=0.5), pair=pair, sampler_name=sampler)
    assert host.reported == []
    assert len({engine for engine, *_ in seen}) == 1  # one engine for the whole pass
    refiner = PAIRS[pair][1][0]
    first = next(i for i, call in enumerate(seen) if call[4] == refiner)
    assert 0 < first
    _, step, used, _, _ = seen[first]
    # The momentum after the last step completed before the switch (a second-order sampler
    # may switch between the two calls of one step).
    momentum_then = [call for call in seen[:first] if call[1] < step][-1][3]
    assert torch.count_nonzero(momentum_then) > 0
    if carried:
        assert torch.equal(used, momentum_then)
        assert not any("momentum restarted" in c for c in result.comments)
    else:
        # SD 1.5 latents mean nothing to SDXL: the momentum starts again at the switch.
        assert torch.count_nonzero(used) == 0
        assert any("momentum restarted" in c for c in result.comments)
    assert [s for _, s, *_ in seen] == sorted(s for _, s, *_ in seen)  # steps only go forward


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_warmup_past_the_switch_still_changes_the_image(host, sampler):
    baseline = run(host, None, sampler_name=sampler, steps=8).images
    with host.guided_steps() as guided:
        late = run(host, sega_values(warmup="6", momentum_scale=0.0), sampler_name=sampler, steps=8)
    assert host.reported == []
    assert guided and min(guided) == 6
    assert not torch.equal(late.images, baseline)


# ---- off, deterministic, truthful ------------------------------------------------------------------


@pytest.mark.parametrize("pair", ["sd15-sd15", "sdxl-sdxl", "sd15-sdxl"])
@pytest.mark.parametrize("sampler", ["Euler a", "Heun", "DDIM"])
def test_off_is_bit_identical_and_on_is_deterministic(host, pair, sampler):
    kwargs = dict(pair=pair, sampler_name=sampler, batch_size=2)
    baseline = run(host, None, **kwargs).images
    off = run(host, sega_values(enabled=False), **kwargs)
    assert torch.equal(off.images, baseline)
    assert off.extra_generation_params == {"Refiner": PAIRS[pair][1][0], "Refiner switch at": 0.5}
    on = run(host, sega_values(), **kwargs)
    again = run(host, sega_values(), **kwargs)
    assert torch.equal(on.images, again.images) and not torch.equal(on.images, baseline)
    assert host.reported == []
    assert on.extra_generation_params["SEGA concepts"] == "smile\n-glasses"
    assert not {"SEGA stopped", "SEGA off"} & set(on.extra_generation_params)


def test_img2img_batches_each_switch_and_are_guided_after_it(host):
    seen = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.active:
            r, b = record.cond_rows, record.batch
            seen.append((params.denoiser.p.iteration, title(), torch.equal(params.text_cond[r:r + b],
                                                                           params.text_cond[:b])))

    with host.callback("cfg_denoiser", spy):
        result = run(host, sega_values(PROMPT, warmup="0"), img2img=True, denoising_strength=0.8, steps=8,
                     batch_size=2, n_iter=2)
    assert host.reported == [] and "SEGA stopped" not in result.extra_generation_params
    assert {(n, name) for n, name, _ in seen} == {(0, "base15"), (0, "other15"), (1, "base15"), (1, "other15")}
    assert all(same for *_, same in seen)


def test_switch_by_sampling_steps(host):
    seen = []

    def spy(params):
        seen.append((params.denoiser.step, title()))

    with options(refiner_switch_by_sample_steps=True), host.callback("cfg_denoiser", spy):
        result = run(host, sega_values(), switch_at=0.25, sampler_name="Heun", steps=4)
    assert result.extra_generation_params["Refiner switch by sampling steps"] is True
    assert [name for _, name in seen] == ["base15"] * 2 + ["other15"] * 5  # 2 of 8 expected calls
    assert host.reported == [] and "SEGA stopped" not in result.extra_generation_params


def test_concepts_that_cannot_be_encoded_for_the_refiner_stop_sega_and_say_so(host, monkeypatch):
    real = host.w.host.concept_conds

    def failing(p, run_, model, hires):
        if model.sd_checkpoint_info.title == "other15":
            raise RuntimeError("no such embedding")
        return real(p, run_, model, hires)

    monkeypatch.setattr(host.w.host, "concept_conds", failing)
    baseline_after = run(host, sega_values(), sampler_name="Euler")
    assert host.reported == []
    reason = baseline_after.extra_generation_params["SEGA stopped"]
    assert reason == "the concepts could not be encoded for the refiner (RuntimeError: no such embedding)"
    assert "SEGA concepts" in baseline_after.extra_generation_params  # it acted before the switch


@pytest.mark.parametrize("limit", [1, 2], ids=["same object", "own object"])
def test_implicit_masks_go_on_with_the_refiners_layers(host, limit):
    # masks read the cross-attention of the loaded model: at the switch their hooks move
    base, refiner = checkpoint("base15a", "sd1+attn", 0), checkpoint("other15a", "sd1+attn", 10)
    kwargs = dict(checkpoint=base, refiner_checkpoint=refiner, refiner_switch_at=0.5, width=128, height=128,
                  sampler_name="Euler", steps=8)
    with options(sd_checkpoints_limit=limit):
        host.generate(None, **kwargs)  # loads both (building a model reseeds the global RNG)
        late = sega_values("smile :: mask=attention", warmup="5")  # acts only after the switch
        with host.guided_steps() as guided:
            on = host.generate(late, **kwargs)
        again = host.generate(late, **kwargs)
        off = host.generate(None, **kwargs)
    assert host.reported == [] and not any(c.startswith("SEGA") for c in on.comments), on.comments
    assert guided and min(guided) >= 5
    assert torch.equal(on.images, again.images) and not torch.equal(on.images, off.images)
