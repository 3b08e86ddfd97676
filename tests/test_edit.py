"""Editing the input image (img2img "Edit the input image"): inversion inside the stand-in's
img2img pass with the real k-diffusion samplers, its cache, progress and interruption."""

from __future__ import annotations

import contextlib

import pytest
import torch
import webui
from host_harness import Host, init_latent, sega_values
from test_img2img import KEEP, MASK

from sega.inversion import sampler_names

webui.load()
import sega_webui.edit as edit  # noqa: E402  (after the stand-in's modules are importable)

STEPS = 8
EDIT_SAMPLERS = sampler_names()


@pytest.fixture(scope="module")
def host():
    return Host()


@pytest.fixture(autouse=True)
def empty_cache():
    edit.clear_cache()
    yield
    edit.clear_cache()


def run(host, concepts="", invert=True, **kwargs):
    kwargs.setdefault("sampler_name", "Euler a")
    kwargs.setdefault("steps", STEPS)
    kwargs.setdefault("denoising_strength", 0.5)
    values = None if concepts is None else sega_values(concepts=concepts, invert=invert, warmup="0")
    return host.generate(values, img2img=True, **kwargs)


def tolerance(strength: float) -> float:
    # The sampler retraces the inversion's own model calls, so what is left is the rounding of
    # the final residual's addition — at any strength, even with a random-weight model whose
    # estimates would amplify any drift over the schedule's sigmas.
    return 1e-5


@contextlib.contextmanager
def inversions(monkeypatch):
    """How many inversions ran (not taken from the cache) in the block."""
    count = []
    real = edit.invert

    def counted(*a, **kw):
        count.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(edit, "invert", counted)
    yield count


@contextlib.contextmanager
def model_calls(host):
    """Per CFG-denoiser call: (inverting, denoiser.step, state.sampling_step, textinfo, rows, cond)."""
    calls = []

    def spy(params):
        run_ = getattr(params.denoiser.p, "sega_run", None)
        pass_ = getattr(run_, "current", None)
        state = host.w.shared.state
        cond = params.text_cond["crossattn"] if isinstance(params.text_cond, dict) else params.text_cond
        calls.append((bool(getattr(pass_, "inverting", False)), params.denoiser.step, state.sampling_step,
                      state.textinfo, params.x.shape[0], cond.clone(), params.x.clone(), params.sigma.clone()))

    with host.callback("cfg_denoiser", spy, first=True):
        yield calls


# ---- reconstruction ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", EDIT_SAMPLERS)
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_no_concepts_reconstructs_the_input_and_plain_img2img_does_not(host, sampler, strength):
    kwargs = dict(sampler_name=sampler, denoising_strength=strength, batch_size=2, init_images=init_latent(images=2))
    out = run(host, **kwargs)
    x0 = out.p.init_latent
    assert host.reported == [] and not out.comments
    assert (out.images - x0).abs().max() < tolerance(strength)
    plain = run(host, None, **kwargs)
    assert (plain.images - x0).abs().max() > 1.0
    assert out.extra_generation_params["SEGA invert"] == "True"


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])
def test_batch_one_batch_count_two_and_different_init_images(host, sampler):
    out = run(host, sampler_name=sampler, batch_size=1, n_iter=2)
    assert out.images.shape[0] == 2
    assert (out.images - out.p.init_latent[:1]).abs().max() < 1e-5
    images = torch.cat([init_latent(seed=1), init_latent(seed=2)])
    out = run(host, sampler_name=sampler, batch_size=2, init_images=images)
    assert (out.images - images).abs().max() < 1e-5


def test_concepts_change_the_image_far_less_than_plain_img2img(host):
    kwargs = dict(denoising_strength=0.75, batch_size=2)
    x0 = run(host, **kwargs).p.init_latent
    edited = run(host, "smile\n-glasses", **kwargs)
    assert host.reported == []
    change = (edited.images - x0).abs().max()
    assert change > 1e-2
    assert change < (run(host, "smile\n-glasses", invert=False, **kwargs).images - x0).abs().max()


def test_prompt_editing_and_the_negative_prompt_reach_the_inversion_as_they_reach_sampling(host):
    kwargs = dict(prompt="a [cat:dog:0.5] photo", negative_prompt="blurry", denoising_strength=1.0, steps=10)
    with model_calls(host) as calls:
        out = run(host, **kwargs)
    assert (out.images - out.p.init_latent).abs().max() < tolerance(1.0)
    inverting = [c for c in calls if c[0]]
    sampling = [c for c in calls if not c[0]]
    assert len(inverting) == len(sampling) > 2
    # call by call the model sees the same step counters, conds and (up to rounding) inputs
    for a, b in zip(inverting, sampling, strict=True):
        assert a[1:3] == b[1:3] and torch.equal(a[5], b[5]) and torch.equal(a[7], b[7])
        assert torch.equal(a[6], b[6])  # the very same latents: nothing to amplify
    conds = [c[5] for c in sampling]
    assert not torch.equal(conds[0], conds[-1])  # the prompt really switched half-way


def test_inpainting_keeps_the_kept_region_and_reconstructs_the_rest(host):
    for kind in ("sd1", "inpaint"):
        out = run(host, mask=MASK, batch_size=2, denoising_strength=0.75, kind=kind)
        x0 = out.p.init_latent
        keep = KEEP.expand_as(out.samples)
        assert torch.equal(out.samples[keep], x0[keep])
        assert (out.samples - x0).abs().max() < 1e-5
        edited = run(host, "smile", mask=MASK, batch_size=2, denoising_strength=0.75, kind=kind)
        assert torch.equal(edited.samples[keep], x0[keep])
        assert (edited.samples[~keep] - x0[~keep]).abs().max() > 1e-3


def test_same_seed_same_edit_other_seed_other_noise(host):
    a = run(host, "smile", seed=7, denoising_strength=0.75)
    b = run(host, "smile", seed=7, denoising_strength=0.75)
    c = run(host, "smile", seed=8, denoising_strength=0.75)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_each_image_of_a_batch_has_its_own_noise(host, monkeypatch):
    kept = []
    real = edit.invert
    monkeypatch.setattr(edit, "invert", lambda *a, **kw: kept.append(real(*a, **kw)) or kept[-1])
    run(host, batch_size=2, init_images=init_latent(images=1))
    noise = kept[0].noises[0]
    assert not torch.allclose(noise[0], noise[1], atol=1e-2)


def test_eta_and_s_noise_are_honoured(host):
    opts = host.w.shared.opts
    try:
        opts.s_noise = 0.9
        opts.eta_ancestral = 0.7
        # Euler a takes eta only; the SDE samplers take s_noise from the settings too (as in 1.10.1)
        for sampler in ("Euler a", "DPM++ 2M SDE"):
            out = run(host, "smile", sampler_name=sampler)
            assert out.extra_generation_params["Eta"] == 0.7
            assert (run(host, sampler_name=sampler).images - out.p.init_latent).abs().max() < 1e-5
        assert out.extra_generation_params["Sigma noise"] == 0.9
        opts.eta_ancestral = 0.0
        zero = run(host)
        assert "eta is 0" in " ".join(zero.comments)
        assert "eta is 0" in zero.extra_generation_params[edit.OFF_KEY]
    finally:
        opts.reset()


# ---- samplers that cannot carry an edit ---------------------------------------------------------


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DDIM", "UniPC"])
def test_deterministic_samplers_say_so_and_make_ordinary_img2img_with_sega(host, sampler):
    out = run(host, "smile", sampler_name=sampler)
    comment = " ".join(out.comments)
    assert "ordinary img2img with SEGA" in comment and "Euler a" in comment and "DPM++ 2M SDE" in comment
    assert "DPM++ 2M SDE" in out.extra_generation_params[edit.OFF_KEY]
    plain = run(host, "smile", invert=False, sampler_name=sampler)
    assert torch.equal(out.images, plain.images)


def test_txt2img_ignores_invert_with_a_comment(host):
    out = host.generate(sega_values(concepts="smile", invert=True))
    assert "img2img only" in " ".join(out.comments)
    assert "SEGA invert" not in out.extra_generation_params
    assert torch.equal(out.images, host.generate(sega_values(concepts="smile")).images)


# ---- invert once, edit many ---------------------------------------------------------------------


def test_a_second_edit_does_not_invert_again_and_costs_plain_img2img_with_sega(host, monkeypatch):
    with inversions(monkeypatch) as count:
        first = run(host, "smile")
        with model_calls(host) as second_calls:
            second = run(host, "-glasses :: scale=7", threshold=0.9)
        with model_calls(host) as plain_calls:
            run(host, "-glasses :: scale=7", invert=False, threshold=0.9)
    assert len(count) == 1
    assert not torch.equal(first.images, second.images)
    assert [c[4] for c in second_calls] == [c[4] for c in plain_calls]  # same calls, same rows
    cached = run(host, "smile")
    assert torch.equal(cached.images, first.images) and len(count) == 1


CHANGES = {
    "seed": dict(seed=99),
    "prompt": dict(prompt="another photo"),
    "negative prompt": dict(negative_prompt="ugly"),
    "cfg scale": dict(cfg_scale=3.0),
    "steps": dict(steps=STEPS + 2),
    "strength": dict(denoising_strength=0.7),
    "sampler": dict(sampler_name="DPM++ 2M SDE"),
    "image": dict(init_images=init_latent(seed=5)),
    "mask": dict(mask=MASK),
    "model": dict(kind="v"),
    "size": dict(width=80, init_images=init_latent(width=80)),
    "batch": dict(batch_size=2),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_key_part_misses_the_cache(host, monkeypatch, change):
    with inversions(monkeypatch) as count:
        run(host, "smile")
        run(host, "-smile :: scale=3")
        assert len(count) == 1
        out = run(host, "smile", **CHANGES[change])
    assert len(count) == 2
    assert (run(host, **CHANGES[change]).images - out.p.init_latent).abs().max() < 1e-5


def test_settings_that_reach_the_model_call_miss_the_cache(host, monkeypatch):
    opts = host.w.shared.opts
    try:
        sde = dict(sampler_name="DPM++ 2M SDE")
        with inversions(monkeypatch) as count:
            run(host, **sde)
            opts.s_noise = 0.95
            run(host, **sde)
            run(host)  # Euler a does not take s_noise: its inversion is not another one
            run(host)
            opts.eta_ancestral = 0.9
            run(host, **sde)
            opts.skip_early_cond = 0.2
            run(host, **sde)
        assert len(count) == 5
    finally:
        opts.reset()


def test_another_scripts_args_miss_the_cache(host, monkeypatch):
    from modules import scripts

    class Other(scripts.Script):
        def title(self):
            return "Other"

    with inversions(monkeypatch) as count:
        run(host, other_scripts=[(Other(), [1])])
        run(host, "smile", other_scripts=[(Other(), [1])])
        run(host, other_scripts=[(Other(), [2])])
    assert len(count) == 2


def test_the_cache_is_bounded_by_the_setting(host, monkeypatch):
    opts = host.w.shared.opts
    try:
        opts.sega_inversion_cache = 2
        with inversions(monkeypatch) as count:
            for seed in (1, 2, 3):
                run(host, seed=seed)
            assert edit.cache_stats()[0] == 2
            run(host, seed=3)
            run(host, seed=1)  # the oldest was dropped
        assert len(count) == 4
        kept, size = edit.cache_stats()
        # every step but the last keeps one latent-sized noise per image, plus the residual, the
        # start and init latents it was made from, and the (here 5×1×1) image conditioning
        x = run(host, seed=1).p.init_latent
        assert size == kept * ((4 + 1 + 2) * x.numel() * x.element_size() + 5 * 4)
        opts.sega_inversion_cache = 0
        with inversions(monkeypatch) as count:
            run(host, seed=1)
            run(host, seed=1)
        assert len(count) == 2 and edit.cache_stats()[0] == 0
    finally:
        opts.reset()


# ---- progress and interruption ------------------------------------------------------------------


def test_progress_shows_the_inversion_as_its_own_phase(host):
    with model_calls(host) as calls:
        out = run(host)
    inverting = [c for c in calls if c[0]]
    n = len(inverting)
    assert [c[3] for c in inverting] == [f"SEGA inversion {i + 1}/{n}" for i in range(n)]
    assert all(c[3] is None for c in calls if not c[0])
    assert host.w.shared.state.textinfo is None and out.images is not None


@pytest.mark.parametrize("how", ["interrupt", "skip"])
def test_interrupting_the_inversion_leaves_no_entry_and_the_next_generation_is_clean(host, monkeypatch, how):
    state = host.w.shared.state
    seen = []

    def stop_at_third(params):
        pass_ = getattr(getattr(params.denoiser.p, "sega_run", None), "current", None)
        if getattr(pass_, "inverting", False):
            seen.append(1)
            if len(seen) == 3:
                state.interrupt() if how == "interrupt" else state.skip()

    with host.callback("cfg_denoiser", stop_at_third):
        out = run(host, n_iter=2 if how == "skip" else 1)
    assert host.reported == []
    if how == "interrupt":
        assert edit.cache_stats()[0] == 0 and len(seen) == 3
    else:  # the skipped batch left nothing; the second batch was inverted and remade
        assert edit.cache_stats()[0] == 1
        assert (out.images[1:] - out.p.init_latent).abs().max() < 1e-5
    assert state.textinfo is None
    with inversions(monkeypatch) as count:
        again = run(host)  # the first batch's image: inverted afresh, whole
    assert len(count) == 1
    assert (again.images - again.p.init_latent).abs().max() < 1e-5


# ---- maps ---------------------------------------------------------------------------------------


def test_guidance_maps_work_in_edit_mode(host):
    values = sega_values(concepts="smile\n-glasses", invert=True, warmup="0", show_maps=True)
    out = host.generate(values, img2img=True, sampler_name="Euler a", steps=STEPS, pil_images=True, batch_size=2)
    assert host.reported == []
    maps = [im for im in out.images if "SEGA map" in getattr(im, "info", {})]
    assert len(maps) == 2 * 3



# ---- checkpoints and other extensions -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["sdxl", "v", "sd3"])
def test_other_checkpoints_reconstruct_and_edit(host, kind):
    # SD3: 16 latent channels and a flow model's noisy latents, (1 − σ)·x₀ + σ·n
    images = init_latent(images=2).repeat(1, 4 if kind == "sd3" else 1, 1, 1)
    out = run(host, kind=kind, batch_size=2, init_images=images)
    assert host.reported == [] and not out.comments
    assert (out.images - out.p.init_latent).abs().max() < 1e-5
    edited = run(host, "smile", kind=kind, batch_size=2, init_images=images)
    assert (edited.images - out.p.init_latent).abs().max() > 1e-3


def test_controlnet_per_step_control_reaches_the_inversion_as_it_reaches_sampling(host):
    from host_harness import other_extension

    def cn():
        return other_extension("sd-webui-controlnet", "controlnet").ControlNet("Balanced", guidance_end=0.5)

    kwargs = dict(denoising_strength=1.0, batch_size=2)
    out = run(host, extensions=[cn()], **kwargs)
    assert host.reported == []
    assert (out.images - out.p.init_latent).abs().max() < tolerance(1.0)
    # the control matters, and it stops half-way: a control left on all the way differs
    plain_end = run(host, None, extensions=[cn()], seed=3, **kwargs).images
    unit = cn()
    unit.guidance_end = 1.0
    assert not torch.allclose(plain_end, run(host, None, extensions=[unit], seed=3, **kwargs).images)
    edited = run(host, "smile", extensions=[cn()], **kwargs)
    assert (edited.images - out.p.init_latent).abs().max() > 1e-2


def test_a_refiner_switch_is_declined_with_a_reason(host):
    from host_harness import checkpoint

    base, refiner = checkpoint("base15", "sd1", 0), checkpoint("other15", "sd1", 10)
    values = sega_values(concepts="smile", invert=True, warmup="0")
    kwargs = dict(img2img=True, sampler_name="Euler a", steps=STEPS, denoising_strength=0.5)
    # a first run loads both checkpoints (building a stand-in model reseeds the global RNG)
    host.generate(None, checkpoint=base, refiner_checkpoint=refiner, refiner_switch_at=0.5, **kwargs)
    out = host.generate(values, checkpoint=base, refiner_checkpoint=refiner, refiner_switch_at=0.5, **kwargs)
    assert "refiner" in out.extra_generation_params[edit.OFF_KEY]
    plain = host.generate(sega_values(concepts="smile", warmup="0"), checkpoint=base, refiner_checkpoint=refiner,
                          refiner_switch_at=0.5, **kwargs)
    assert torch.equal(out.images, plain.images)


def test_an_edit_adds_no_device_to_host_copy_in_segas_callbacks(host):
    from test_webui_maps import count_syncs

    run(host, "smile\n-glasses", batch_size=2)  # inverted; the edit below takes it from the cache
    with count_syncs(host) as cached:
        run(host, "smile\n-glasses :: scale=7", batch_size=2)
    with count_syncs(host) as first:
        run(host, "smile\n-glasses", batch_size=2, seed=11)  # inverts: SEGA's callbacks stay out
    assert cached["sega"] == 0 and first["sega"] == 0
    assert cached["all"] > 0  # the counter does count (the host's own conversions)


@pytest.mark.parametrize("mask", ["attention", "intersect"])
def test_implicit_masks_work_in_edit_mode(host, mask):
    # a 16 × 16 latent: the masks read the cross-attention on the latent/4 grid
    size = dict(kind="sd1+attn", width=128, height=128, init_images=init_latent(128, 128, images=2), batch_size=2)
    remade = run(host, **size)
    x0 = remade.p.init_latent
    assert (remade.images - x0).abs().max() < 1e-5
    values = sega_values(concepts=f"smile :: mask={mask}", invert=True, warmup="0")
    kwargs = dict(img2img=True, sampler_name="Euler a", steps=STEPS, denoising_strength=0.75, **size)
    edited = host.generate(values, **kwargs)
    assert host.reported == [] and not edited.comments, edited.comments
    assert edited.extra_generation_params["SEGA concepts"] == f"smile :: mask={mask}"
    assert (edited.images - x0).abs().max() > 1e-3
    assert torch.equal(host.generate(values, **kwargs).images, edited.images)
    threshold = host.generate(sega_values(concepts="smile", invert=True, warmup="0"), **kwargs)
    assert not torch.equal(threshold.images, edited.images)


@pytest.mark.parametrize("kind", ["sd1", "inpaint"])
def test_the_cache_hits_although_the_webui_resamples_the_photos_encoding(host, monkeypatch, kind):
    processing = host.w.processing
    monkeypatch.setattr(processing, "VAE_POSTERIOR_STD", 1e-3)
    kwargs = dict(kind=kind, mask=MASK if kind == "inpaint" else None, batch_size=2)
    with inversions(monkeypatch) as count:
        first = run(host, **kwargs)
        edited = run(host, "smile", **kwargs)
        again = run(host, **kwargs)
    assert len(count) == 1
    # each request encoded the photo anew …
    assert not torch.equal(again.p.init_latent, first.p.init_latent)
    # … and the edits went on from the latents the inversion was made from (where a mask
    # keeps the photo, the WebUI's final blend puts this request's own encoding)
    region = ~KEEP.expand_as(first.images) if kind == "inpaint" else torch.ones_like(first.images, dtype=torch.bool)
    assert (again.images - first.p.init_latent)[region].abs().max() < 1e-5
    assert torch.equal(again.images[~region], again.p.init_latent[~region])
    assert (first.images - first.p.init_latent).abs().max() < 1e-5
    assert (edited.images - first.p.init_latent)[region].abs().max() > 1e-3
    other = run(host, init_images=init_latent(seed=77), **kwargs)  # another picture: inverted
    assert len(count) == 2 and (other.images - other.p.init_latent).abs().max() < 1e-5
