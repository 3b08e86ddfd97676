"""SEGA in img2img and inpainting, driven through the stand-in's img2img processing."""

from __future__ import annotations

import contextlib

import pytest
import torch
from host_harness import Host, init_latent, sampler_frame_step, sega_values

STEPS = 10
# Latent mask (8×8 for a 64×64 image): the left half is repainted.
MASK = torch.zeros(8, 8)
MASK[:, :4] = 1
KEEP = MASK == 0


@pytest.fixture(scope="module")
def host():
    return Host()


def real_steps(sampler: str, strength: float, fix_steps: bool = False) -> int:
    """Sampler steps an img2img pass of STEPS runs in WebUI 1.10.1 (setup_img2img_steps, then
    the tail of the schedule: k-diffusion runs t_enc + 1 sigmas steps, DDIM and PLMS loop over
    timesteps[:t_enc] minus one, UniPC over t_enc)."""
    t_enc = STEPS - 1 if fix_steps else int(min(strength, 0.999) * STEPS)
    return {"DDIM": t_enc - 1, "PLMS": t_enc - 1, "UniPC": t_enc}.get(sampler, t_enc + 1)


@contextlib.contextmanager
def completed_steps(host):
    """The `x` the sampler carries after each completed step (its step callback)."""
    from modules import sd_samplers_common as common

    real = common.Sampler.callback_state
    seen = []

    def spy(self, d):
        seen.append((d["i"], d["x"].clone()))
        return real(self, d)

    common.Sampler.callback_state = spy
    try:
        yield seen
    finally:
        common.Sampler.callback_state = real


@contextlib.contextmanager
def blend_before_denoising(host, on=True):
    """What an extension can do to a k-diffusion sampler: blend into the model's input."""
    samplers = host.w.processing.sd_samplers
    real = samplers.create_sampler

    def create(name, model):
        sampler = real(name, model)
        sampler.model_wrap_cfg.mask_before_denoising = on
        return sampler

    samplers.create_sampler = create
    try:
        yield
    finally:
        samplers.create_sampler = real


# ---- off is the WebUI without the extension ---------------------------------------------------


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
@pytest.mark.parametrize("mask", [None, MASK], ids=["img2img", "inpaint"])
def test_off_is_bit_identical_and_on_changes_the_image(host, sampler, mask):
    kwargs = dict(img2img=True, sampler_name=sampler, steps=STEPS, mask=mask, batch_size=2)
    baseline = host.generate(None, **kwargs)
    off = host.generate(sega_values(enabled=False), **kwargs)
    on = host.generate(sega_values(warmup="0"), **kwargs)
    assert host.reported == []
    assert torch.equal(off.images, baseline.images) and torch.equal(off.samples, baseline.samples)
    assert not torch.equal(on.images, baseline.images)
    assert on.extra_generation_params["SEGA concepts"] == "smile\n-glasses"


# ---- which step a number means ------------------------------------------------------------------


SAMPLERS = ["Euler", "Heun", "DDIM", "PLMS", "UniPC"]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strength, fix", [(0.3, False), (0.75, False), (1.0, False), (0.5, True)],
                         ids=["0.3", "0.75", "1.0", "0.5 exact steps"])
def test_steps_are_the_steps_the_pass_runs(host, sampler, strength, fix):
    opts = host.w.shared.opts
    seen = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None:
            seen.append((sampler_frame_step(), record.step, record.pass_.steps))

    try:
        opts.img2img_fix_steps = fix
        with host.callback("cfg_denoiser", spy), completed_steps(host) as completed:
            host.generate(sega_values(warmup="0"), img2img=True, sampler_name=sampler, steps=STEPS,
                          denoising_strength=strength)
    finally:
        opts.reset()
    assert host.reported == []
    n = real_steps(sampler, strength, fix)
    assert len(completed) == n  # what the sampler really ran
    assert seen and {steps for _, _, steps in seen} == {n}
    assert all(truth == ours for truth, ours, _ in seen), seen
    assert max(ours for _, ours, _ in seen) == n - 1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_warmup_at_the_last_real_step_acts_and_past_it_does_not(host, sampler):
    n = real_steps(sampler, 0.75)
    kwargs = dict(img2img=True, sampler_name=sampler, steps=STEPS, denoising_strength=0.75)
    baseline = host.generate(None, **kwargs).images
    past = host.generate(sega_values(warmup=str(n), momentum_scale=0.0), **kwargs).images
    assert torch.equal(past, baseline)
    with host.guided_steps() as guided:
        last = host.generate(sega_values(warmup=str(n - 1), momentum_scale=0.0), **kwargs).images
    assert host.reported == []
    assert not torch.equal(last, baseline)
    assert set(guided) == {n - 1}


def test_batch_count_reuses_the_sampler_and_counts_each_batch(host):
    # img2img makes its sampler once per generation and samples every batch with it.
    seen = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None:
            seen.append((params.denoiser.sampler, record.pass_, record.step, sampler_frame_step()))

    with host.callback("cfg_denoiser", spy):
        result = host.generate(sega_values(warmup="0"), img2img=True, sampler_name="Heun", steps=STEPS, n_iter=2)
    assert host.reported == []
    samplers = {id(s) for s, *_ in seen}
    passes = {id(p): p for _, p, _, _ in seen}
    assert len(samplers) == 1 and len(passes) == 2
    assert all(p.steps == real_steps("Heun", 0.75) for p in passes.values())
    assert all(ours == truth for *_, ours, truth in seen)
    import k_diffusion.sampling

    assert seen[0][0].func.__wrapped__ is k_diffusion.sampling.sample_heun  # wrapped once, not per batch
    assert not torch.equal(result.images[0], result.images[1])


@pytest.mark.parametrize("sampler, first", [("Euler", 4), ("DDIM", 3), ("UniPC", 4)])
def test_percentages_are_shares_of_the_real_steps(host, sampler, first):
    # 0.75 of 10 steps: Euler runs 8 (50% → 4), DDIM 6 (→ 3), UniPC 7 (3.5 rounds up → 4).
    with host.guided_steps() as guided:
        host.generate(sega_values(warmup="50%", momentum_scale=0.0), img2img=True, sampler_name=sampler,
                      steps=STEPS, denoising_strength=0.75)
    assert min(guided) == first


# ---- inpainting: the kept region ---------------------------------------------------------------

AFTER = [("Euler", False), ("Heun", False), ("DPM++ 2M", False)]
BEFORE = [("DDIM", None), ("PLMS", None), ("UniPC", None), ("Euler", True)]


def _inpaint_run(host, values, sampler, forced, mask=MASK, **kwargs):
    """(result, [(x before ours, x after ours) per after-CFG call], completed steps' x)."""
    calls = []

    def before(params):
        calls.append([params.x.clone(), None, host.w.host._current.record])

    def after(params):
        calls[-1][1] = params.x.clone()

    ctx = blend_before_denoising(host) if forced else contextlib.nullcontext()
    with ctx, host.callback("cfg_after_cfg", before, first=True), host.callback("cfg_after_cfg", after), \
            completed_steps(host) as completed:
        result = host.generate(values, img2img=True, sampler_name=sampler, steps=STEPS, mask=mask, batch_size=2,
                               **kwargs)
    return result, calls, completed


@pytest.mark.parametrize("sampler, forced", AFTER + BEFORE,
                         ids=[f"{s}-{'before' if f in (None, True) else 'after'}" for s, f in AFTER + BEFORE])
def test_sega_leaves_the_kept_latents_alone(host, sampler, forced):
    baseline, _, plain_steps = _inpaint_run(host, None, sampler, forced)
    result, calls, steps = _inpaint_run(host, sega_values(warmup="0"), sampler, forced)
    assert host.reported == []
    init = result.p.init_latent
    # SEGA's own change to each guided result is exactly zero where the mask keeps…
    moved = [after - before for before, after, _ in calls]
    assert all(torch.equal(d[..., KEEP], torch.zeros_like(d[..., KEEP])) for d in moved)
    # …and acts where it repaints.
    assert any(d[..., ~KEEP].abs().max() > 0 for d in moved)
    assert not torch.equal(result.samples[..., ~KEEP], baseline.samples[..., ~KEEP])
    assert torch.equal(result.samples[..., KEEP], init[..., KEEP])
    if forced is False:
        # Blended after CFG: every guided result keeps the original latents exactly, and so the
        # sampler carries exactly what it carries without the extension there, step by step.
        assert all(torch.equal(after[..., KEEP], init[..., KEEP]) for _, after, _ in calls)
        assert len(steps) == len(plain_steps)
        for (i, x), (j, plain) in zip(steps, plain_steps, strict=True):
            assert i == j and torch.equal(x[..., KEEP], plain[..., KEEP])


def test_thresholds_count_only_the_repainted_region(host):
    """"The strongest 10 %" of a small mask, not of the whole picture (where most of the
    strongest values would lie outside the mask and be dropped)."""
    small = torch.zeros(8, 8)
    small[2:4, 2:4] = 1
    seen = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.term is not None:
            seen.append((record.term.clone(), record.repaint.clone()))

    with host.callback("cfg_denoised", spy):
        host.generate(sega_values("smile", warmup="0", threshold=0.9, momentum_scale=0.0), img2img=True,
                      sampler_name="Euler", steps=6, mask=small)
    assert seen
    for term, repaint in seen:
        inside = (repaint > 0).expand_as(term)
        assert torch.equal(term[~inside], torch.zeros_like(term[~inside]))
        # 10% of each channel's 4 repainted values: the top one per (image, channel) is kept.
        kept = (term != 0).reshape(term.shape[0], term.shape[1], -1).sum(-1)
        assert torch.equal(kept, torch.ones_like(kept))


class SoftBlend:
    """A soft-inpainting-like script: replaces the host's blend with a nonlinear one whose
    weight depends on the noise level, and keeps the sampler's result at the final blend."""

    args_from = args_to = None

    def on_mask_blend(self, p, mba, *args):
        if mba.is_final_blend:
            mba.blended_latent = mba.current_latent
            return
        t = mba.nmask ** (1.0 + 1.0 / (1.0 + float(mba.sigma[0])))
        mba.blended_latent = mba.init_latent + (mba.current_latent - mba.init_latent) * t


@pytest.mark.parametrize("sampler, forced", [("Euler", False), ("DDIM", None)], ids=["after", "before"])
def test_soft_inpainting_blend_and_blurred_mask(host, sampler, forced):
    mask = torch.zeros(16, 16)
    mask[:, :6] = 1
    kwargs = dict(width=128, height=128, mask_blur=1, mask_round=False, other_scripts=[(SoftBlend(), [])])
    kwargs["init_images"] = init_latent(128, 128)
    baseline, _, plain_steps = _inpaint_run(host, None, sampler, forced, mask, **kwargs)
    result, calls, steps = _inpaint_run(host, sega_values(warmup="0"), sampler, forced, mask, **kwargs)
    assert host.reported == []
    nmask = result.p.nmask[0]
    kept, partial = nmask == 0, (nmask > 0) & (nmask < 1)
    assert kept.any() and partial.any()
    moved = [after - before for before, after, _ in calls]
    assert all(torch.equal(d[..., kept], torch.zeros_like(d[..., kept])) for d in moved)
    assert any(d[..., partial].abs().max() > 0 for d in moved)
    # Weighted as the host weights the guided result in its own blend: by nmask.
    for d, (_, _, record) in zip(moved, calls, strict=True):
        if record is not None and record.term is not None:
            scale = 1.0 if record.eps_space else -record.sigma.view(-1, 1, 1, 1)
            torch.testing.assert_close(d, scale * record.term * nmask, rtol=1e-5, atol=1e-6)
    if forced is False:
        for (_, x), (_, plain) in zip(steps, plain_steps, strict=True):
            assert torch.equal(x[..., kept], plain[..., kept])


# ---- inpainting checkpoints, only-masked, blur -----------------------------------------------------


@pytest.mark.parametrize("low_vram", [False, True], ids=["batched", "low VRAM"])
def test_inpainting_model_concept_rows_get_their_image_cond(host, low_vram):
    images = torch.cat([init_latent(seed=1), init_latent(seed=2)])
    rows = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.active:
            rows.append((params.image_cond.clone(), record))

    model_inputs = []
    from host_harness import model

    m = model("inpaint")

    def unet_spy(module, args):
        # What the UNet receives: the latent rows with their c_concat (mask + masked image).
        model_inputs.append(args[0].shape)

    kwargs = dict(kind="inpaint", img2img=True, steps=6, mask=MASK, batch_size=2, init_images=images)
    opts = host.w.shared.opts
    # A pre-hook, not a replaced apply_model: SEGA would take a replaced model call for
    # another extension's and evaluate its concepts separately.
    handle = m.unet.register_forward_pre_hook(unet_spy)
    try:
        opts.sega_low_vram = low_vram
        baseline = host.generate(None, **kwargs)
        with host.callback("cfg_denoiser", spy):
            result = host.generate(sega_values(warmup="0"), **kwargs)
    finally:
        handle.remove()
        opts.reset()
    assert host.reported == []
    expected = result.p.image_conditioning  # [2, 5, 8, 8]: mask, then the masked image
    assert expected.shape == (2, 5, 8, 8) and not torch.equal(expected[0], expected[1])
    assert rows
    for image_cond, record in rows:
        b, r = record.batch, record.cond_rows
        assert torch.equal(image_cond[-b:], expected)
        if low_vram:
            assert torch.equal(record.image_cond, expected)
        else:
            for j in range(len(record.active)):
                assert torch.equal(image_cond[r + j * b: r + (j + 1) * b], expected)
    assert model_inputs and all(tuple(shape[1:]) == (9, 8, 8) for shape in model_inputs)
    assert not torch.equal(result.samples[..., ~KEEP], baseline.samples[..., ~KEEP])
    assert torch.equal(result.samples[..., KEEP], result.p.init_latent[..., KEEP])


def test_inpaint_only_masked_with_blur(host):
    mask = torch.zeros(16, 16)
    mask[5:9, 6:10] = 1
    original = init_latent(128, 128)
    kwargs = dict(img2img=True, steps=6, mask=mask, init_images=original, inpaint_full_res=True,
                  inpaint_full_res_padding=1, mask_blur=1, width=64, height=64)
    baseline = host.generate(None, **kwargs)
    off = host.generate(sega_values(enabled=False), **kwargs)
    on = host.generate(sega_values(warmup="0"), **kwargs)
    assert host.reported == []
    assert torch.equal(off.images, baseline.images)
    p = on.p
    assert p.paste_to is not None and on.images.shape == original.shape
    outside = p.mask_for_overlay == 0
    assert torch.equal(on.images[..., outside], original[..., outside])
    assert not torch.equal(on.images[..., mask > 0], baseline.images[..., mask > 0])
    assert on.extra_generation_params["Inpaint area"] == "Only masked"
