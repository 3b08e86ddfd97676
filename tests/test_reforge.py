"""SEGA through reForge's sampling plumbing (sega_webui/reforge.py) in the reForge stand-in:
the concepts' cond lists in the host's own batched call, CFG scale 1, the steps reForge
computes no uncond for, other extensions' wrappers and a replaced batch function, memory,
masks read from the batched call, and parity with the A1111 path."""

from __future__ import annotations

import host_harness
import pytest
import reforge
import torch
from host_harness import sega_values

from sega.guidance import SegaGuidance


@pytest.fixture(scope="module")
def host():
    return reforge.Host()


class Patcher:
    """Another extension: clones the UNet patcher in process_before_every_sampling and sets
    `patch(unet, p)` on it."""

    def __init__(self, patch):
        self.patch = patch

    def process_before_every_sampling(self, p, *args, **kwargs):
        unet = p.sd_model.forge_objects.unet.clone()
        self.patch(unet, p)
        p.sd_model.forge_objects.unet = unet


@pytest.fixture
def other(host):
    def use(patch):
        host.extra_scripts[:] = [Patcher(patch)]

    yield use
    host.extra_scripts.clear()


@pytest.mark.parametrize(("concepts", "batch"), [("smile\n-glasses", 2), ("a\nb\nc", 1)])
def test_the_concepts_join_the_hosts_one_batched_call_per_step(host, concepts, batch):
    k = len(concepts.split("\n"))
    host.generate(sega_values(concepts, warmup="0"), batch_size=batch, steps=4)
    assert host.calls() == [(2 + k) * batch] * 4
    host.generate(None, batch_size=batch, steps=4)
    assert host.calls() == [2 * batch] * 4


def test_only_the_concepts_acting_at_a_step_are_evaluated(host):
    host.generate(sega_values("smile :: cooldown=2\n-glasses", warmup="0"), steps=4)
    assert host.calls() == [4, 4, 3, 3]


def test_cfg_scale_1_steps_are_guided_with_the_uncond_computed(host):
    baseline = host.generate(None, cfg_scale=1.0, steps=4).images
    assert host.calls() == [1] * 4  # reForge's shortcut: no uncond at CFG 1
    off = host.generate(sega_values(enabled=False), cfg_scale=1.0, steps=4).images
    assert torch.equal(off, baseline) and host.calls() == [1] * 4
    on = host.generate(sega_values(warmup="0"), cfg_scale=1.0, steps=4)
    assert host.calls() == [4] * 4
    assert not torch.equal(on.images, baseline) and on.comments == {}


@pytest.mark.parametrize(("option", "value", "calls"), [("skip_early_cond", 0.5, [1, 1, 1, 4]),
                                                         ("s_min_uncond", 100.0, [1, 4, 1, 4])])
def test_steps_reforge_computes_no_uncond_for_are_left_unguided_and_said(host, option, value, calls):
    opts = host.w.shared.opts
    setattr(opts, option, value)
    try:
        plain = host.generate(None, steps=4)
        result = host.generate(sega_values(warmup="0"), steps=4)
    finally:
        setattr(opts, option, 0.0)
    assert host.calls() == calls
    patcher = host.w.host.reforge.patcher
    assert result.comments == {patcher.UNGUIDED: 1}
    assert result.p.extra_generation_params[patcher.UNGUIDED_KEY] == patcher.UNGUIDED_STEPS
    assert not torch.equal(result.images, plain.images)


def test_another_extensions_wrapper_composes_with_sega(host, other):
    """An SLG/PerpNeg-style wrapper that adds a cond list of its own: both lists ride in the
    same call, each wrapper gets the outputs it asked for."""
    pe = host.w.patcher_extension
    seen = []

    def wrapper(executor, model, conds, x_in, timestep, model_options):
        out = executor(model, conds + [[dict(d) for d in conds[0]]], x_in, timestep, model_options)
        seen.append(len(out) - len(conds))
        return out[: len(conds)]

    other(lambda unet, p: pe.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "other", wrapper, unet.model_options,
                                                   is_model_options=True))
    result = host.generate(sega_values(warmup="0"), steps=4)
    assert host.calls() == [5] * 4  # cond, uncond, two concepts, the other's list: one call
    assert seen == [1] * 4 and result.comments == {}
    host.extra_scripts.clear()
    alone = host.generate(sega_values(warmup="0"), steps=4)
    torch.testing.assert_close(result.images, alone.images, rtol=1e-3, atol=1e-4)


def test_another_patchs_own_model_call_in_a_post_cfg_function_leaves_segas_step_alone(host, other):
    """reForge's SAG makes a model call of its own — calc_cond_batch(model, [uncond], …), the
    pass's options and so SEGA's wrapper included — in its post-CFG function, which runs
    before SEGA's: that call is not the step's, and SEGA still adds its term after it."""
    samplers = host.w.samplers
    made = []

    def sag(args):
        made.append(samplers.calc_cond_batch(args["model"], [args["uncond"]], args["input"] * 0.9, args["sigma"],
                                             args["model_options"])[0])
        return args["denoised"]

    other(lambda unet, p: unet.set_model_sampler_post_cfg_function(sag))
    alone = host.generate(None, steps=4).images
    together = host.generate(sega_values(warmup="0"), steps=4)
    assert len(made) == 8 and together.comments == {}
    assert host.calls() == [4, 1] * 4  # the step's call with the concepts, then SAG's own
    host.extra_scripts.clear()
    sega = host.generate(sega_values(warmup="0"), steps=4).images
    assert not torch.equal(together.images, alone)
    torch.testing.assert_close(together.images, sega)  # SAG's stand-in changes nothing itself


def test_a_replaced_batch_function_turns_sega_off_with_the_reason(host, other):
    samplers = host.w.samplers

    def replace(unet, p):
        unet.model_options["sampler_calc_cond_batch_function"] = lambda args: samplers._calc_cond_batch(
            args["model"], args["conds"], args["input"], args["sigma"], args["model_options"])

    other(replace)
    baseline = host.generate(None, steps=4).images
    result = host.generate(sega_values(warmup="0"), steps=4)
    assert result.comments == {"SEGA off: " + host.w.host.reforge.REPLACED: 1}
    assert torch.equal(result.images, baseline)


def test_hires_is_patched_once_and_guided(host):
    first_only = host.generate(sega_values(warmup="0", hires=False), steps=3, enable_hr=True, hr_scale=1.5, hr_cfg=7.0)
    both = host.generate(sega_values(warmup="0"), steps=3, enable_hr=True, hr_scale=1.5, hr_cfg=7.0)
    assert host.calls() == [4] * 6
    assert not torch.equal(both.images, first_only.images) and both.comments == {}


def test_the_concepts_rows_are_reserved_with_the_memory_manager(host):
    unet = host.unet()
    for concepts, batch in (("a\nb\nc", 1), ("a", 2)):
        seen = []
        real = type(unet).add_extra_preserved_memory_during_sampling

        def spy(self, amount, seen=seen, real=real):
            seen.append(amount)
            return real(self, amount)

        type(unet).add_extra_preserved_memory_during_sampling = spy
        try:
            host.generate(sega_values(concepts), batch_size=batch, steps=2)
        finally:
            type(unet).add_extra_preserved_memory_during_sampling = real
        k = len(concepts.split("\n"))
        shape = [4, 8, 8]
        expected = int(unet.memory_required([(2 + k) * batch, *shape])) - int(unet.memory_required([2 * batch, *shape]))
        assert seen == [expected] and expected > 0


MASKED = dict(width=128, height=128)  # a 4 × 4 attention grid


def _maps(monkeypatch):
    seen = []
    real = SegaGuidance.step

    def spy(self, step, uncond, concepts, *args, attention=None, **kwargs):
        if attention is not None:
            seen.append(attention.clone())
        return real(self, step, uncond, concepts, *args, attention=attention, **kwargs)

    monkeypatch.setattr(SegaGuidance, "step", spy)
    return seen


def test_the_masks_attention_equals_the_a1111_paths_also_when_the_call_is_split(monkeypatch):
    """reForge packs the cond lists in its own order (last list first) and splits the call
    when memory is short: the masks find the concept rows by their list, so the maps are
    the A1111 path's either way."""
    seen = _maps(monkeypatch)
    values = sega_values(warmup="1", mask="intersect")
    a1111 = host_harness.Host()
    a1111.generate(values, kind="sd1+attn", batch_size=2, steps=4, **MASKED)
    reference = seen[0]
    h = reforge.Host()
    for free in (None, "two lists"):
        seen.clear()
        mm = h.w.model_management
        saved = mm.FREE_MEMORY
        if free:
            mm.FREE_MEMORY = h.unet("sd1+attn").model.memory_required([4, 4, 16, 16]) * 1.5 + 1
        try:
            result = h.generate(values, kind="sd1+attn", batch_size=2, steps=4, **MASKED)
        finally:
            mm.FREE_MEMORY = saved
        assert h.reported == [] and result.comments == {}
        assert result.p.extra_generation_params["SEGA mask"] == "intersect"
        if free:
            assert h.calls("sd1+attn") == [4, 4] * 4  # (cond, uncond, 2 concepts) in 2 calls of 2 lists
        torch.testing.assert_close(seen[0], reference, rtol=1e-4, atol=1e-6)
        assert seen[0].shape == (2, 2, 4, 4)


def test_editing_with_reforges_comfyui_samplers_says_why_it_is_img2img(host):
    """With `sd_sampling` = "ldm patched (Comfy)" reForge samples with ComfyUI's functions,
    which the inversion does not retrace: the pass is ordinary img2img with SEGA, and says so."""
    from host_harness import init_latent

    photo = init_latent(64, 64)
    kwargs = dict(img2img=True, denoising_strength=1.0, init_images=photo, sampler_name="Euler a")
    opts = host.w.shared.opts
    opts.sd_sampling = "ldm patched (Comfy)"
    try:
        result = host.generate(sega_values("smile", invert=True, warmup="0"), **kwargs)
    finally:
        opts.sd_sampling = "A1111"
    reason = host.w.host.reforge.EDIT_SAMPLERS
    assert result.comments == {f"SEGA: the image was not inverted, so this is ordinary img2img with SEGA: {reason}": 1}
    assert result.p.extra_generation_params["SEGA invert off"] == reason
    assert "SEGA concepts" in result.p.extra_generation_params  # still guided
