"""SEGA beside the extensions people run with it (stand-ins in tests/webui_stub/extensions,
each written from the extension's source): with the other extension on,
SEGA off ⇒ the image of the extension alone, SEGA's rows present with a zero term ⇒ the
same image, SEGA on ⇒ a changed image, and nothing reported to the console."""

from __future__ import annotations

import pytest
import torch
from host_harness import Host, fail_engine_step_at, other_extension, sega_values


@pytest.fixture(scope="module")
def host():
    return Host()


def controlnet(mode="Balanced"):
    return other_extension("sd-webui-controlnet", "controlnet").ControlNet(mode)


def dynamic_thresholding():
    return other_extension("sd-dynamic-thresholding", "dynamic_thresholding").DynamicThresholding()


def regional_prompter():
    return other_extension("sd-webui-regional-prompter", "rp").RegionalPrompter()


def tiled_diffusion():
    return other_extension("multidiffusion-upscaler-for-automatic1111", "tilediffusion").TiledDiffusion()


def freeu():
    return other_extension("sd-webui-freeu", "freeu").FreeU()


class Installed:
    """An extension that patches the WebUI at load time rather than per generation."""

    def __init__(self, extension):
        self.extension = extension

    def __enter__(self):
        self.extension.install()

    def __exit__(self, *exc):
        self.extension.uninstall()


def prompt_fusion():
    return other_extension("prompt-fusion-extension", "promptlang").PromptFusion()


def neutral_prompt():
    return other_extension("sd-webui-neutral-prompt", "neutral_prompt").NeutralPrompt()


PER_GENERATION = {
    "controlnet-balanced": lambda: controlnet("Balanced"),
    "controlnet-prompt": lambda: controlnet("My prompt is more important"),
    "controlnet-control": lambda: controlnet("ControlNet is more important"),
    "dynamic-thresholding": dynamic_thresholding,
    "regional-prompter": regional_prompter,
    "tiled-diffusion": tiled_diffusion,
    "freeu": freeu,
}
INSTALLED = {"prompt-fusion": prompt_fusion, "neutral-prompt": neutral_prompt}
# Where SEGA keeps its rows out of the host's call, the host's call is the very same one.
SEPARATE = {"dynamic-thresholding", "regional-prompter", "tiled-diffusion", "neutral-prompt"}
PROMPT = "a castle BREAK a forest"  # two regions for Regional Prompter


def three_runs(host, make, sampler, batch, **kw):
    """(extension alone, SEGA off, SEGA's rows with a zero term, SEGA on) and whether
    SEGA used a separate call."""
    separate = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.active:
            separate.append(record.concept_rows is not None)

    common = dict(sampler_name=sampler, batch_size=batch, prompt=PROMPT, **kw)
    alone = host.generate(None, extensions=make(), **common)
    off = host.generate(sega_values("smiling, smile", enabled=False), extensions=make(), **common)
    with host.callback("cfg_denoiser", spy):
        zero = host.generate(sega_values("smiling, smile", scale=0.0, warmup="0"), extensions=make(), **common)
        assert host.reported == [] and not zero.comments, (host.reported, zero.comments)
        on = host.generate(sega_values("smiling, smile\n-glasses", warmup="0"), extensions=make(), **common)
        assert host.reported == [] and not on.comments, (host.reported, on.comments)
    assert separate and len(set(separate)) == 1
    return alone.images, off.images, zero.images, on.images, separate[0]


def assert_three_properties(name, runs, batch):
    alone, off, zero, on, separate = runs
    assert separate == (name in SEPARATE)
    assert torch.equal(off, alone)
    if separate:
        assert torch.equal(zero, alone)  # the host's call is the very same
    else:
        # A wider call may round differently (CPU BLAS picks kernels by the number of rows;
        # ≤ 1e-4 here, with or without another extension) — far below what SEGA or a row
        # read as the wrong kind does (> 1e-1).
        torch.testing.assert_close(zero, alone, rtol=0, atol=1e-3)
    assert (on - alone).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", sorted(PER_GENERATION))
def test_sega_beside_a_per_generation_extension(host, name, batch, sampler):
    runs = three_runs(host, lambda: [PER_GENERATION[name]()], sampler, batch)
    assert_three_properties(name, runs, batch)


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", sorted(INSTALLED))
def test_sega_beside_an_installed_extension(host, name, batch, sampler):
    with Installed(INSTALLED[name]()):
        runs = three_runs(host, list, sampler, batch)
    assert_three_properties(name, runs, batch)


# ---- ControlNet in detail -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_controlnet_sees_concept_rows_as_cond_rows_with_the_prompts_control(host, kind):
    """A concept whose text is the prompt's gets exactly the prompt row's output: same
    mark, same control — the difference SEGA takes is semantic only."""
    seen = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.active and record.concept_rows is None:
            r, b = record.cond_rows, record.batch
            seen.append((params.x[:r], params.x[r:r + b]))

    cn = controlnet("ControlNet is more important")
    with host.callback("cfg_denoised", spy):
        result = host.generate(sega_values("a photo of a face", warmup="0"), kind=kind, extensions=[cn],
                               prompt="a photo of a face", batch_size=1)
    assert host.reported == [] and not result.comments
    assert cn.seen_unmarked == 0  # every call stayed fully marked
    assert seen
    for prompt_rows, concept_rows in seen:
        torch.testing.assert_close(concept_rows, prompt_rows, rtol=0, atol=1e-5)


def test_controlnet_with_batch_hires_sdxl_and_low_vram(host):
    opts = host.w.shared.opts
    common = dict(kind="sdxl", batch_size=2, enable_hr=True, hr_scale=1.5, prompt=PROMPT)
    alone = host.generate(None, extensions=[controlnet("Balanced")], **common).images
    on = host.generate(sega_values("smile", warmup="0"), extensions=[controlnet("Balanced")], **common)
    assert host.reported == [] and not on.comments
    opts.sega_low_vram = True
    try:
        low = host.generate(sega_values("smile", warmup="0"), extensions=[controlnet("Balanced")], **common)
    finally:
        opts.reset()
    assert host.reported == [] and not low.comments
    assert (on.images - alone).abs().max() > 1e-2
    torch.testing.assert_close(low.images, on.images, rtol=1e-4, atol=1e-4)


# ---- Regional Prompter: concept rows never reach its attention hook --------------------------


def test_regional_prompters_hook_sees_only_the_hosts_calls(host):
    alone, beside = regional_prompter(), regional_prompter()
    host.generate(None, extensions=[alone], prompt=PROMPT, batch_size=2)
    host.generate(sega_values("smile\n-glasses", warmup="0"), extensions=[beside], prompt=PROMPT, batch_size=2)
    assert host.reported == []
    assert beside.calls == alone.calls  # SEGA's 2 × 2 concept rows went around the hook
    assert all("forward" not in vars(m) for m in beside.layers)  # put back after SEGA's calls


def test_a_concept_beside_regional_prompter_is_evaluated_by_the_plain_model(host):
    """With the same concept, the concept estimate beside Regional Prompter is the plain
    model's, so SEGA's direction is the concept's, not the regions' cut of it."""
    estimates = {}

    def spy_for(key):
        def spy(params):
            record = host.w.host._current.record
            if record is not None and record.active and key not in estimates:
                b = record.batch
                if record.concept_rows is None:
                    r = record.cond_rows
                    estimates[key] = params.x[r:r + b].clone()
                else:
                    estimates[key] = host.w.host.compat.evaluate_separately(record, params.inner_model, params.x)
        return spy

    with host.callback("cfg_denoised", spy_for("plain")):
        host.generate(sega_values("smile", warmup="0"), prompt=PROMPT, steps=1)
    with host.callback("cfg_denoised", spy_for("rp")):
        host.generate(sega_values("smile", warmup="0"), extensions=[regional_prompter()], prompt=PROMPT, steps=1)
    torch.testing.assert_close(estimates["rp"], estimates["plain"], rtol=0, atol=1e-4)


# ---- encoding like the host -----------------------------------------------------------------


def test_prompt_fusion_interpolation_inside_a_concept(host):
    phases = set()

    def spy(params):
        record = host.w.host._current.record
        if record is not None and record.active:
            phases.add(record.pass_.rows_cache and len(record.pass_.rows_cache))

    with Installed(prompt_fusion()):
        baseline = host.generate(sega_values("[smile:frown:0,6]", scale=0.0, warmup="0")).images
        with host.callback("cfg_denoiser", spy):
            on = host.generate(sega_values("[smile:frown:0,6]", warmup="0"))
    assert host.reported == [] and not on.comments
    # A cond per step (calls 0 and 1 share the first: the host's first-entry-not-ended rule).
    assert max(phases) >= 5
    assert (on.images - baseline).abs().max() > 1e-2


@pytest.mark.parametrize("old", [False, True])
def test_concepts_follow_the_old_timelines_setting_like_the_prompt(host, old):
    schedules = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and not schedules:
            schedules.append([e.end_at_step for e in record.pass_.schedules[0]])

    opts = host.w.shared.opts
    opts.use_old_scheduling = old
    try:
        with host.callback("cfg_denoiser", spy):
            host.generate(sega_values("[cat:dog:1.0]", warmup="0"), steps=6)
    finally:
        opts.reset()
    # Old timelines read 1.0 as step 1; new ones as the whole of the steps.
    assert schedules == [[1, 6] if old else [6]]


def test_extra_network_tags_are_left_out_of_the_concept_and_said_so(host):
    texts = []

    def spy(params):
        record = host.w.host._current.record
        if record is not None and not texts:
            texts.extend(c.text for c in record.pass_.args.concepts)

    with host.callback("cfg_denoiser", spy):
        result = host.generate(sega_values("smile <lora:happy:0.8>\n-glasses", warmup="0"))
    assert texts == ["smile", "glasses"]
    assert any("<lora:happy:0.8>" in c and "whole model" in c for c in result.comments)
    assert result.extra_generation_params["SEGA concepts"] == "smile\n-glasses"
    plain = host.generate(sega_values("smile\n-glasses", warmup="0"))
    assert torch.equal(result.images, plain.images)


def test_dynamic_thresholdings_renamed_sampler_keeps_its_step_counting(host):
    from sega_webui.steps import sampler_family

    sampler = host.w.processing.sd_samplers.create_sampler("DPM fast", host.w.shared.sd_model)
    assert sampler_family("DPM fast_dynthres3", sampler) == "DPM fast"
    sampler = host.w.processing.sd_samplers.create_sampler("Euler", host.w.shared.sd_model)
    assert sampler_family("Euler_dynthres3", sampler) == "Euler_dynthres3"


# ---- when SEGA cannot act, the user reads it ---------------------------------------------------


def test_failed_encoding_is_told_and_the_infotext_claims_nothing(host, monkeypatch):
    prompt_parser = host.w.host.prompt_parser
    real = prompt_parser.get_learned_conditioning

    def failing(model, prompts, *args):
        if any("smile" in p for p in prompts):
            raise RuntimeError("no such embedding")
        return real(model, prompts, *args)

    monkeypatch.setattr(prompt_parser, "get_learned_conditioning", failing)
    result = host.generate(sega_values("smile"), batch_size=2)
    monkeypatch.undo()
    plain = host.generate(None, batch_size=2)
    assert torch.equal(result.images, plain.images)
    assert host.reported == []
    assert any(c.startswith("SEGA off: the concepts could not be encoded") for c in result.comments)
    params = result.extra_generation_params  # what the API's `info` carries
    assert "no such embedding" in params["SEGA off"] and "SEGA concepts" not in params
    assert all("SEGA concepts" not in info and "SEGA off" in info for info in result.infotexts)


def test_each_batchs_infotext_says_what_happened_in_that_batch(host, monkeypatch):
    fail_engine_step_at(monkeypatch, 1)  # in the first batch only
    result = host.generate(sega_values("smile", warmup="0"), n_iter=2)
    first, second = result.infotexts
    assert "SEGA concepts" not in first and "boom" in first["SEGA off"]
    assert second["SEGA concepts"] == "smile" and "SEGA off" not in second
    assert host.reported == []
