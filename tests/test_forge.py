"""SEGA through Forge's sampling plumbing (sega_webui/forge.py) in the Forge stand-in:
the concepts' extra model call, CFG scale 1, the steps Forge computes no uncond for, the
hires pass's double hook, memory, other patches, parity with the A1111 path, and what is
off on Forge with its reason."""

from __future__ import annotations

import threading

import forge
import host_harness
import pytest
import torch
from host_harness import sega_values

from sega.guidance import SegaGuidance


@pytest.fixture(scope="module")
def host():
    return forge.Host()


@pytest.mark.parametrize(("concepts", "batch"), [("smile\n-glasses", 2), ("a\nb\nc", 1)])
def test_one_extra_batched_call_of_k_b_rows_per_guided_step(host, concepts, batch):
    host.generate(sega_values(concepts, warmup="0"), batch_size=batch, steps=4)
    k = len(concepts.split("\n"))
    assert host.calls() == [2 * batch, k * batch] * 4
    host.generate(None, batch_size=batch, steps=4)
    assert host.calls() == [2 * batch] * 4


def test_only_the_concepts_acting_at_a_step_are_evaluated(host):
    host.generate(sega_values("smile :: cooldown=2\n-glasses", warmup="0"), steps=4)
    assert host.calls() == [2, 2, 2, 2, 2, 1, 2, 1]


def test_cfg_scale_1_steps_are_guided_with_the_uncond_computed(host):
    baseline = host.generate(None, cfg_scale=1.0).images
    assert host.calls() == [1] * 6  # Forge's shortcut: no uncond at CFG 1
    off = host.generate(sega_values(enabled=False), cfg_scale=1.0).images
    assert torch.equal(off, baseline) and host.calls() == [1] * 6
    on = host.generate(sega_values(warmup="0"), cfg_scale=1.0)
    assert host.calls() == [2, 2] * 6
    assert not torch.equal(on.images, baseline) and on.comments == {}


def test_steps_forge_computes_no_uncond_for_are_left_alone(host):
    opts = host.w.shared.opts
    opts.skip_early_cond = 0.5
    try:
        with forge.active():
            result = host.generate(sega_values(warmup="0"), steps=4)
    finally:
        opts.skip_early_cond = 0.0
    # Calls 0-2 (step/total ≤ 0.5) skip the uncond: plain cond rows, no concept call.
    assert host.calls() == [1, 1, 1, 2, 2]
    assert result.comments == {host.w.host.forge.patcher.UNGUIDED: 1}


def test_hires_fix_patches_once_although_forge_hooks_twice(host):
    host.generate(sega_values(warmup="0"), steps=4, enable_hr=True, hr_scale=1.5)
    assert host.calls() == [2, 2] * 8


def test_the_term_equals_the_a1111_paths(monkeypatch):
    """Same model, sampler, seed: the first guided step's estimates and term agree."""
    seen = {}
    real = SegaGuidance.step

    def spy(self, step, uncond, concepts, *args, **kwargs):
        term = real(self, step, uncond, concepts, *args, **kwargs)
        seen.setdefault(spy.host, (uncond.clone(), concepts.clone(), term.clone()))
        return term

    monkeypatch.setattr(SegaGuidance, "step", spy)
    hosts = {"a1111": host_harness.Host(), "forge": forge.Host()}
    for name, h in hosts.items():
        spy.host = name
        h.generate(sega_values(warmup="0"), sampler_name="Euler", batch_size=2)
    for a, f in zip(seen["a1111"], seen["forge"], strict=True):
        torch.testing.assert_close(f, a, rtol=1e-4, atol=1e-5)
    assert seen["forge"][2].abs().max() > 0


def test_models_beyond_the_webuis_are_off_with_the_reason(host, monkeypatch):
    baseline = host.generate(None).images
    engine = host.engine("sd1")
    monkeypatch.setattr(engine, "is_webui_legacy_model", lambda: False, raising=False)
    flux = host.generate(sega_values())
    assert flux.p.extra_generation_params == {"SEGA off": host.w.host.forge.NOT_LEGACY}
    assert torch.equal(flux.images, baseline)


MASKED = dict(width=128, height=128)  # a 4 × 4 attention grid


def _maps_seen(monkeypatch):
    seen = []
    real = SegaGuidance.step

    def spy(self, step, uncond, concepts, *args, attention=None, **kwargs):
        seen.append(None if attention is None else attention.clone())
        return real(self, step, uncond, concepts, *args, attention=attention, **kwargs)

    monkeypatch.setattr(SegaGuidance, "step", spy)
    return seen


@pytest.mark.parametrize("kind", ["sd1+attn", "sdxl+attn"])
def test_the_masks_attention_equals_the_a1111_paths(monkeypatch, kind):
    """The same model, sampler and seed: the attention maps Forge's attn2 patch reads are the
    ones A1111's forward hooks read, step for step, and so is the image's guidance."""
    seen = _maps_seen(monkeypatch)
    values = sega_values(warmup="1", mask="intersect")
    maps = {}
    for name, h in (("a1111", host_harness.Host()), ("forge", forge.Host())):
        seen.clear()
        result = h.generate(values, kind=kind, batch_size=2, steps=4, **MASKED)
        assert h.reported == [] and not any("SEGA" in c for c in result.comments)
        assert result.p.extra_generation_params["SEGA mask"] == "intersect"
        maps[name] = [m for m in seen if m is not None]
    assert len(maps["forge"]) == len(maps["a1111"]) == 4  # the warm-up step computes them too
    # The first guided step sees the same latent on both hosts; later ones drift apart as
    # the hosts round their CFG differently.
    torch.testing.assert_close(maps["forge"][0], maps["a1111"][0], rtol=1e-4, atol=1e-6)
    assert maps["forge"][0].shape == (2, 2, 4, 4) and maps["forge"][0].sum() > 0


def test_masks_read_the_attention_also_when_another_patch_replaces_it(monkeypatch):
    """IP-Adapter replaces the attention of every cross-attention layer (patches_replace
    "attn2"), so no forward hook would see it; SEGA's attn2 patch runs before the
    replacement and reads the layer's own q·kᵀ."""
    seen = _maps_seen(monkeypatch)
    host = forge.Host()
    calls = []

    class Replacer:
        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()

            def attention(q, k, v, extra):
                calls.append(extra["block"])
                h = extra["n_heads"]
                q, k, v = (t.view(t.shape[0], t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                return 1.5 * out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)

            replace = unet.model_options["transformer_options"].setdefault("patches_replace", {})
            replace["attn2"] = {("input", 1, 0): attention, ("output", 0, 0): attention, ("middle", 0, 0): attention}
            p.sd_model.forge_objects.unet = unet

    kwargs = dict(kind="quadrant", steps=4, **MASKED)
    values = sega_values("smile :: threshold=0.75", warmup="0", mask="attention")
    plain = host.generate(values, **kwargs)
    plain_maps = [m for m in seen if m is not None]
    seen.clear()
    host.extra_scripts = [Replacer()]
    try:
        replaced = host.generate(values, **kwargs)
        replaced_maps = [m for m in seen if m is not None]
        baseline = host.generate(sega_values("smile", scale=0.0, warmup="0", mask="attention"), **kwargs)
    finally:
        host.extra_scripts = []
    assert calls and replaced.comments == {} and host.reported == []
    assert len(replaced_maps) == len(plain_maps) == 4
    torch.testing.assert_close(replaced_maps[0], plain_maps[0])  # step 1: the same latent
    assert not torch.equal(replaced.images, plain.images)  # the replacement is not dropped
    diff = (replaced.images - baseline.images).abs()
    assert diff[..., :8, :8].max() > 1e-3
    diff[..., :8, :8] = 0
    assert diff.max() <= 1e-6  # the concept still acts only where its words are attended


def test_a_model_the_masks_cannot_read_turns_sega_off_with_the_reason(host):
    baseline = host.generate(None).images
    masked = host.generate(sega_values(mask="attention"))  # no tokenizer, no latent/4 layers
    (comment,) = masked.comments
    assert comment.startswith("SEGA off: the mask needs") and torch.equal(masked.images, baseline)


def test_the_concepts_rows_are_reserved_with_forges_memory_manager(host):
    memory = host.w.memory_management
    unet = host.engine("sd1").forge_objects_original.unet
    for concepts, batch in (("a\nb\nc\nd\ne", 1), ("a", 1), ("a\nb\nc", 2)):
        memory.loaded.clear()
        host.generate(sega_values(concepts), batch_size=batch, steps=2)
        k = len(concepts.split("\n"))
        want = max(0, unet.memory_required([k * batch, 4, 8, 8]) - unet.memory_required([2 * batch, 4, 8, 8]))
        assert memory.loaded[-1]["hard_memory_preservation"] == want
    assert want > 0


def test_another_extensions_cfg_patch_stays_and_sega_adds_to_it(host):
    """Dynamic Thresholding's Forge port sets the CFG function on its own clone, before or
    after SEGA's: both act."""
    used, shared = [], []

    class Thresholding:
        def process_before_every_sampling(self, p, *args, **kwargs):
            p.host_lock = threading.Lock()  # the real `p` holds locks: a deep copy of it fails
            before = p.sd_model.forge_objects.unet.model_options.get("sampler_post_cfg_function", [])
            unet = p.sd_model.forge_objects.unet.clone()
            after = unet.model_options.get("sampler_post_cfg_function", [])
            shared.append(all(a.__self__ is b.__self__ for a, b in zip(after, before, strict=True)))

            def cfg(args):
                used.append(1)
                return (args["cond"] - args["uncond"]) * args["cond_scale"] * 0.5 + args["uncond"]

            unet.set_model_sampler_cfg_function(cfg)
            p.sd_model.forge_objects.unet = unet

    def run(values, first):
        with forge.active() as w:
            other = Thresholding()
            entries = [(other, 0)] + ([(host.script, len(values))] if values else [])
            if not first:
                entries.reverse()
            runner = w.scripts.ScriptRunner(entries)
            w.shared.sd_model = host.engine("sd1")
            p = w.processing.StableDiffusionProcessingTxt2Img(
                prompt="a photo of a face", steps=4, script_args=[None] + list(values or []), scripts=runner)
            used.clear()
            images = w.processing.process_images(p).images
            return images, len(used)

    alone, n = run(None, True)
    assert n == 4
    for first in (True, False):
        together, n = run(sega_values(warmup="0"), first)
        assert n == 4 and not torch.equal(together, alone)
    assert shared and all(shared)  # a clone after SEGA's calls SEGA's own patch, not a copy


def test_guidance_maps_come_out_of_forges_inference_mode(host):
    result = host.generate(sega_values(warmup="0", show_maps=True), pil_images=True)
    assert host.reported == [] and len(result.images) == 1 + 3  # the image, two concepts and all
