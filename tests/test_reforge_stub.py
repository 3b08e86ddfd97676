"""The reForge stand-in (tests/reforge_stub, loaded by tests/reforge.py) behaves as reForge
3b56b268 does where an extension touches it: the model calls of a CFG step, the
CALC_COND_BATCH wrapper, the attn2 patches, the CFG function arguments, clone, the hires
pass's single hook, NGMS, host detection — and, with nothing patched, the same images as
the A1111 stand-in wherever the sampler's sigmas sit on discrete timesteps."""

from __future__ import annotations

import host_harness
import pytest
import reforge
import torch


@pytest.fixture(scope="module")
def host():
    return reforge.Host()


class Patcher:
    """A tiny extension script: in process_before_every_sampling it clones the UNet patcher,
    lets `patch(unet, p)` set things on the clone and puts the clone on forge_objects."""

    def __init__(self, patch):
        self.patch = patch
        self.passes = 0

    def process_before_every_sampling(self, p, *args, **kwargs):
        self.passes += 1
        unet = p.sd_model.forge_objects.unet.clone()
        self.patch(unet, p)
        p.sd_model.forge_objects.unet = unet


@pytest.fixture
def patched(host):
    def use(patch):
        script = Patcher(patch)
        host.extra_scripts[:] = [script]
        return script

    yield use
    host.extra_scripts.clear()


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "v"])
def test_off_generation_runs_txt2img_img2img_and_hires(host, kind):
    txt = host.generate(None, kind=kind, batch_size=2)
    assert txt.images.shape == (2, 4, 8, 8) and torch.isfinite(txt.images).all()
    assert host.calls(kind) == [4] * 6 and host.reported == []
    img = host.generate(None, kind=kind, img2img=True, denoising_strength=0.5)
    assert torch.isfinite(img.images).all() and host.calls(kind) == [2] * 4
    hires = host.generate(None, kind=kind, enable_hr=True, hr_scale=1.5, steps=4)
    assert hires.images.shape == (1, 4, 12, 12) and torch.isfinite(hires.images).all()
    assert host.calls(kind) == [2] * 8


def test_one_model_call_per_step_of_2b_rows_and_b_at_cfg_1(host):
    host.generate(None, batch_size=3, steps=4)
    assert host.calls() == [6] * 4
    host.generate(None, batch_size=3, steps=4, cfg_scale=1.0)
    assert host.calls() == [3] * 4


def test_calc_cond_batch_splits_the_call_when_memory_is_short(host):
    unet = host.unet()
    two_rows = unet.model.memory_required([2, 4, 8, 8])
    saved = host.w.model_management.FREE_MEMORY
    host.w.model_management.FREE_MEMORY = two_rows * 1.5 + 1  # room for 2 rows, not 4
    try:
        split = host.generate(None, batch_size=2, steps=3).images
        assert host.calls() == [2, 2] * 3
    finally:
        host.w.model_management.FREE_MEMORY = saved
    whole = host.generate(None, batch_size=2, steps=3).images
    torch.testing.assert_close(split, whole, rtol=1e-3, atol=1e-4)


def test_a_calc_cond_batch_wrapper_adds_a_cond_list_to_the_same_model_call(host, patched):
    seen = []
    pe = host.w.patcher_extension

    def wrapper(executor, model, conds, x_in, timestep, model_options):
        extra = [dict(d) for d in conds[0]]  # the positive prompt again, as a third list
        out = executor(model, conds + [extra], x_in, timestep, model_options)
        seen.append((len(conds), len(out), out[0], out[2]))
        return out[:2]

    def patch(unet, p):
        pe.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "test", wrapper, unet.model_options,
                                is_model_options=True)

    baseline = host.generate(None, batch_size=2, steps=4).images
    patched(patch)
    result = host.generate(None, batch_size=2, steps=4).images
    assert host.calls() == [6] * 4  # 3B rows in ONE call per step
    assert [(n, m) for n, m, _, _ in seen] == [(2, 3)] * 4
    for _, _, cond, extra in seen:
        torch.testing.assert_close(extra, cond, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(result, baseline, rtol=1e-3, atol=1e-4)
    # The clone took the wrapper; the pristine patcher has none.
    assert pe.get_all_wrappers(pe.WrappersMP.CALC_COND_BATCH, host.unet().model_options, is_model_options=True) == []


def test_a_wrapper_added_on_the_patcher_itself_is_inert_on_the_a1111_path(host, patched):
    used = []

    def wrapper(executor, *args):
        used.append(1)
        return executor(*args)

    patched(lambda unet, p: unet.add_wrapper_with_key(host.w.patcher_extension.WrappersMP.CALC_COND_BATCH, "k", wrapper))
    host.generate(None, steps=3)
    assert used == [] and host.calls() == [2] * 3


def test_attn2_patches_see_every_cross_attention_block_with_the_rows_of_the_call(host, patched):
    seen = []

    def observe(n, context, value, extra):
        seen.append((extra["block"], extra["block_index"], tuple(extra["cond_or_uncond"]), n.shape[0],
                     context.shape[0], extra["n_heads"], extra["dim_head"], tuple(extra["original_shape"])))
        return n, context, value

    baseline = host.generate(None, batch_size=2, steps=2).images
    patched(lambda unet, p: unet.set_model_attn2_patch(observe))
    result = host.generate(None, batch_size=2, steps=2).images
    assert torch.equal(result, baseline)  # an observing patch changes nothing
    blocks = [s[0] for s in seen[:4]]
    assert blocks == [("input", 1), ("middle", 0), ("output", 2), ("output", 3)]
    assert len(seen) == 8 and {s[1] for s in seen} == {0}
    # Uncond rows first, then cond rows (calc_cond_batch packs the lists in reverse).
    assert {s[2:5] for s in seen} == {((1, 0), 4, 4)}
    assert {s[7] for s in seen} == {(4, 4, 8, 8)}
    assert all(s[5] * s[6] in (32, 64) for s in seen)


def test_an_attn2_patch_can_replace_context_and_value(host, patched):
    baseline = host.generate(None, steps=2).images

    def zero_value(n, context, value, extra):
        return n, context, torch.zeros_like(value)

    patched(lambda unet, p: unet.set_model_attn2_patch(zero_value))
    assert not torch.equal(host.generate(None, steps=2).images, baseline)
    # The patches come off the shared UNet after each call: the A1111 stand-in is untouched.
    assert all("forward" not in m.__dict__ for m in host_harness.model("sd1").unet.modules())


def test_cfg_functions_get_reforges_arguments(host, patched):
    post, pre = [], []

    def post_cfg(args):
        post.append(args)
        return args["denoised"]

    def pre_cfg(args):
        pre.append(sorted(args))
        return args["conds_out"]

    def patch(unet, p):
        unet.set_model_sampler_post_cfg_function(post_cfg)
        unet.set_model_sampler_pre_cfg_function(pre_cfg)

    patched(patch)
    host.generate(None, steps=2, cfg_scale=5.0)
    assert sorted(post[0]) == ["cond", "cond_denoised", "cond_scale", "denoised", "input", "model",
                               "model_options", "sigma", "uncond", "uncond_denoised"]
    assert post[0]["cond_scale"] == 5.0 and len(post[0]["uncond"]) == 1
    assert sorted(post[0]["cond"][0]) == ["cross_attn", "model_conds", "strength"]
    assert sorted(post[0]["cond"][0]["model_conds"]) == ["c_crossattn"]
    assert pre[0] == ["cond_scale", "conds", "conds_out", "input", "model", "model_options", "sigma", "timestep"]
    post.clear()
    host.generate(None, steps=2, cfg_scale=1.0)
    # CFG 1: no uncond list (None) and a zero uncond prediction, unless disable_cfg1_optimization.
    assert post[0]["uncond"] is None and not post[0]["uncond_denoised"].any()
    assert host.calls() == [1, 1]
    patched(lambda unet, p: unet.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True))
    host.generate(None, steps=2, cfg_scale=1.0)
    assert host.calls() == [2, 2]


def test_sdxl_conds_carry_the_pooled_vector_as_y(host, patched):
    seen = []

    def post_cfg(args):
        seen.append(args["cond"][0])
        return args["denoised"]

    patched(lambda unet, p: unet.set_model_sampler_post_cfg_function(post_cfg))
    host.generate(None, kind="sdxl", steps=1)
    assert sorted(seen[0]) == ["cross_attn", "model_conds", "pooled_output", "strength"]
    assert sorted(seen[0]["model_conds"]) == ["c_crossattn", "y"]


def test_clone_deep_copies_model_options(host):
    unet = host.unet()
    clone = unet.clone()
    clone.set_model_attn2_patch(lambda *a: a[:3])
    clone.model_options["transformer_options"]["custom"] = [1]
    assert unet.model_options == {"transformer_options": {}}
    again = clone.clone()
    assert again.model_options["transformer_options"]["custom"] is not clone.model_options["transformer_options"]["custom"]
    assert again.model is unet.model


def test_hires_resets_the_unet_and_calls_the_hook_once_per_pass(host, patched):
    clones = []
    script = patched(lambda unet, p: clones.append((p.is_hr_pass, unet.parent is host.unet())))
    host.generate(None, steps=2, enable_hr=True, hr_scale=1.5)
    assert script.passes == 2  # Forge calls it three times here
    assert clones == [(False, True), (True, True)]  # each pass starts from the pristine UNet


def test_hires_samples_at_hr_cfg(host):
    host.generate(None, steps=2, enable_hr=True, hr_scale=1.5, hr_cfg=1.0)
    assert host.calls() == [2, 2, 1, 1]


def test_ngms_skips_the_uncond_on_even_steps(host):
    opts = host.w.shared.opts
    opts.s_min_uncond = 100.0
    try:
        result = host.generate(None, steps=4)
    finally:
        opts.s_min_uncond = 0.0
    assert host.calls() == [1, 2, 1, 2] and result.extra_generation_params["NGMS"] == 100.0


def test_skip_early_cfg_skips_the_uncond(host):
    opts = host.w.shared.opts
    opts.skip_early_cond = 0.5
    try:
        host.generate(None, steps=4)
    finally:
        opts.skip_early_cond = 0.0
    assert host.calls() == [1, 1, 1, 2]


def test_the_extension_sees_reforge(host):
    with reforge.active() as w:
        assert w.hosts.detect() == "reforge" and w.hosts.CURRENT == "reforge"
        import sega_webui.hosts

        assert sega_webui.hosts.CURRENT == "reforge"
    import sega_webui.hosts

    assert sega_webui.hosts.detect() == "a1111"


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "v"])
def test_images_equal_the_a1111_stand_ins_when_sigmas_sit_on_timesteps(host, kind):
    """Euler over linspace(999, 0, n) timesteps: whole timesteps for n − 1 dividing 999 (4, 10
    steps; hires: 5 steps at strength 0.5 → 10). There both hosts call the same UNet on the
    same timesteps and compute the same CFG."""
    a1111 = host_harness.Host()
    cases = [dict(steps=4), dict(steps=10), dict(img2img=True, denoising_strength=0.5, steps=4),
             dict(steps=4, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=5)]
    for kw in cases:
        ours = host.generate(None, kind=kind, batch_size=2, sampler_name="Euler", **kw).images
        theirs = a1111.generate(None, kind=kind, batch_size=2, sampler_name="Euler", **kw).images
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=5e-4)


def test_images_differ_from_a1111s_where_reforge_rounds_the_timestep(host):
    """6 steps: timesteps 799.2, 599.4, … — A1111's CompVisDenoiser(quantize=False) feeds them
    to the UNet as they are; reForge's ModelSamplingDiscrete.timestep takes the nearest whole one."""
    ours = host.generate(None, sampler_name="Euler", steps=6).images
    assert [int(t[0]) for t in host.timesteps()] == [999, 799, 599, 400, 200, 0]
    assert all(torch.equal(t, t.round()) for t in host.timesteps())
    theirs = host_harness.Host().generate(None, sampler_name="Euler", steps=6).images
    assert (ours - theirs).abs().max() > 1e-3
