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


def test_cfg_scale_1_steps_are_guided_with_the_negative_prompt_in_segas_call(host):
    """At CFG 1 Forge's step stays its own call of B rows; SEGA's call carries the negative
    prompt's B rows behind the concepts' K·B. A step where nothing acts costs nothing more
    and is Forge's own, bit for bit."""
    baseline = host.generate(None, cfg_scale=1.0).images
    assert host.calls() == [1] * 6  # Forge's shortcut: no uncond at CFG 1
    off = host.generate(sega_values(enabled=False), cfg_scale=1.0).images
    assert torch.equal(off, baseline) and host.calls() == [1] * 6
    on = host.generate(sega_values(warmup="0"), cfg_scale=1.0)
    assert host.calls() == [1, 3] * 6
    assert not torch.equal(on.images, baseline) and on.comments == {}
    late = host.generate(sega_values(warmup="4", momentum_scale=0.0), cfg_scale=1.0)
    assert host.calls() == [1] * 4 + [1, 3] * 2
    assert late.comments == {} and not torch.equal(late.images, baseline)
    assert torch.equal(host.generate(sega_values(warmup="6", momentum_scale=0.0), cfg_scale=1.0).images, baseline)
    assert host.calls() == [1] * 6


def test_at_cfg_1_sega_evaluates_the_negative_prompt_forge_did_not_encode(host, monkeypatch):
    """Forge's setup_conds drops the negative prompt at CFG 1 (`p.uc = None`) and
    calculate_hr_conds at Hires CFG 1 (`p.hr_uc = None`, the API's default): SEGA encodes it
    as Forge would have, so the uncond its directions are taken against is the user's
    negative prompt's own prediction, in the first pass and in the hires pass — the same as
    a call of that prompt alone."""
    with forge.active() as w:
        from backend.sampling.condition import compile_conditions
        from backend.sampling.sampling_function import calc_cond_uncond_batch

        from sega_webui import forge as forge_path

    seen, real = [], forge_path.ForgePatch._predictions
    want = host.engine("sd1").get_learned_conditioning(["blurry, dark"])

    def predictions(self, args, *a, **kw):
        concepts, uncond = real(self, args, *a, **kw)
        alone, _ = calc_cond_uncond_batch(args["model"], compile_conditions(want), None, args["input"], args["sigma"],
                                          args["model_options"])
        seen.append((uncond, alone, args["input"].shape[-1]))
        return concepts, uncond

    kwargs = dict(cfg_scale=1.0, steps=3, negative_prompt="blurry, dark", enable_hr=True, hr_scale=1.5)
    texts = []
    with forge.active() as w:
        spy = lambda params: texts.append(params.text_uncond)  # noqa: E731
        w.script_callbacks.callbacks["cfg_denoiser"].append(spy)
        monkeypatch.setattr(forge_path.ForgePatch, "_predictions", predictions)
        try:
            result = host.generate(sega_values(warmup="0"), **kwargs)
        finally:
            w.script_callbacks.callbacks["cfg_denoiser"].remove(spy)
    assert result.comments == {} and host.calls() == [1, 3, 1] * 6  # the last: this test's call of it alone
    assert texts == [None] * 6  # Forge's own step is left as Forge made it
    assert sorted({width for *_, width in seen}) == [8, 12]  # both passes
    for uncond, alone, _ in seen:
        torch.testing.assert_close(uncond, alone, rtol=1e-4, atol=1e-5)  # 3 rows against 1: rounding
    assert seen[0][0].abs().max() > 0


def test_a_negative_prompt_of_another_length_gets_its_own_call_at_cfg_1(host):
    long_negative = ", ".join(["blurry"] * 60)  # two CLIP chunks: not to be padded into the concepts' rows
    result = host.generate(sega_values(warmup="0"), cfg_scale=1.0, steps=3, negative_prompt=long_negative)
    assert result.comments == {} and host.calls() == [1, 2, 1] * 3


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
    patcher = host.w.host.forge.patcher
    assert result.comments == {patcher.UNGUIDED: 1}
    assert result.p.extra_generation_params[patcher.UNGUIDED_KEY] == patcher.UNGUIDED_STEPS


def test_hires_fix_patches_once_although_forge_hooks_twice(host):
    host.generate(sega_values(warmup="0"), steps=4, enable_hr=True, hr_scale=1.5)
    assert host.calls() == [2, 2] * 4 + [1, 3] * 4  # the hires pass at Hires CFG 1, Forge's default
    host.generate(sega_values(warmup="0"), steps=4, enable_hr=True, hr_scale=1.5, hr_cfg=7.0)
    assert host.calls() == [2, 2] * 8


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


@pytest.fixture(scope="module")
def flux(host):
    with forge.active():
        from backend.diffusion_engine import FluxEngine

        host.engines["flux"] = FluxEngine(host_harness.model("sd1"))
    return host


def test_flux_is_guided_at_cfg_1_with_the_uncond_and_the_concepts_in_flow_space(flux, monkeypatch):
    """Flux dev runs at CFG 1 with its guidance as an embedding: Forge's step stays its call
    of B rows and SEGA's call has the concepts' K·B rows and the negative prompt's B behind
    them; the engine's directions ε_c − ε_u, with ε = (x − (1 − σ)·x0)/σ, checked against
    float64 from that call's outputs (the flow space hands the engine the differences
    directly, ε_u as 0)."""
    with forge.active():
        from sega_webui import forge as forge_path

    seen = {}
    real_post, real_call, real_step = forge_path.ForgePatch.post_cfg, forge_path.ForgePatch._call, SegaGuidance.step

    def post(self, args):
        seen.setdefault("args", []).append({k: args[k].clone() for k in ("input", "sigma")})
        return real_post(self, args)

    def call(self, *a, **kw):
        out = real_call(self, *a, **kw)
        seen.setdefault("calls", []).append(out.clone())
        return out

    def step(self, s, uncond, concept_eps, *a, **kw):
        seen.setdefault("eps", []).append((uncond.clone(), concept_eps.clone()))
        return real_step(self, s, uncond, concept_eps, *a, **kw)

    baseline = flux.generate(None, kind="flux", cfg_scale=1.0, steps=4, batch_size=2).images
    assert flux.calls("flux") == [2] * 4
    off = flux.generate(sega_values(enabled=False), kind="flux", cfg_scale=1.0, steps=4, batch_size=2).images
    assert torch.equal(off, baseline)
    with forge.active():
        monkeypatch.setattr(forge_path.ForgePatch, "post_cfg", post)
        monkeypatch.setattr(forge_path.ForgePatch, "_call", call)
        monkeypatch.setattr(SegaGuidance, "step", step)
        on = flux.generate(sega_values(warmup="0"), kind="flux", cfg_scale=1.0, steps=4, batch_size=2)
    assert flux.calls("flux") == [2, 6] * 4  # the prompt; then 2 concepts × 2 images and the negative prompt
    assert on.comments == {} and not torch.equal(on.images, baseline)
    # Step 2: at the first step σ = 1, where every flow model's ε is x itself and SEGA's
    # directions are 0 (the x0 predictions differ, their noise estimates do not).
    a = {k: v.double() for k, v in seen["args"][1].items()}
    sigma = a["sigma"].view(-1, 1, 1, 1)
    assert float(seen["args"][0]["sigma"][0]) == 1.0 and bool((sigma < 1).all())

    def eps(x0):
        return (a["input"] - (1 - sigma) * x0.double()) / sigma

    out = seen["calls"][1]
    assert out.shape[:2] == (3, 2)
    uncond_eps, concept_eps = seen["eps"][1]
    got = concept_eps.double() - uncond_eps.double().unsqueeze(0)
    want = torch.stack([eps(c) - eps(out[2]) for c in out[:2]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert want.abs().max() > 1e-3


def test_flux_concepts_are_evaluated_under_the_prompts_distilled_guidance(flux, monkeypatch):
    engine = flux.engines["flux"]
    real = type(engine).get_learned_conditioning
    guidance = []

    def conds(self, prompts):
        out = real(self, prompts)
        if "a photo of a face" in prompts:  # the prompt, at its own distilled CFG scale
            out["guidance"] = torch.full_like(out["guidance"], 5.0)
        return out

    with forge.active():
        from backend.sampling import sampling_function as sf
        real_batch = sf.calc_cond_uncond_batch

        def batch(model, cond, uncond, *args, **kwargs):
            guidance.append([float(d["model_conds"]["guidance"].cond[0]) for d in cond])
            return real_batch(model, cond, uncond, *args, **kwargs)

        monkeypatch.setattr(type(engine), "get_learned_conditioning", conds)
        monkeypatch.setattr(sf, "calc_cond_uncond_batch", batch)
        flux.generate(sega_values(warmup="0"), kind="flux", cfg_scale=1.0, steps=2)
    assert guidance == [[5.0]] * 4  # the prompt's call and the concepts' call alike


def quadrant_flux(seed: int = 0):
    """A Flux in the stand-in's layout whose concept words are attended in one quadrant: in
    double block 2 of 4 (one of the two that are read), the image queries of the top-left
    quadrant get 8 along a direction that the keys of word tokens (channel 0 of the stand-in
    T5's table) also get 8 along — in the dimensions RoPE leaves alone (axis 0, whose
    position id is 0 for every token) — so there the words take almost all attention. The
    text reaches block 2 unchanged: blocks 0 and 1 keep the text stream (zero gates) and
    `txt_in` passes channel 0 through."""
    from backend.nn import flux as F

    class QNorm(F.QKNorm):
        def forward(self, q, k, v):
            q, k = super().forward(q, k, v)
            side = int(q.shape[2] ** 0.5)
            grid = torch.zeros(side, side, dtype=q.dtype)
            grid[: side // 2, : side // 2] = 8.0
            q = q.clone()
            q[..., 0] += grid.flatten()
            return q, k

    class KNorm(F.QKNorm):
        flag = None

        def forward(self, q, k, v):
            q, k = super().forward(q, k, v)
            k = k.clone()
            k[..., 0] += 8.0 * self.flag.to(k.dtype)[:, None, :]
            return q, k

    class Block(F.DoubleStreamBlock):
        def forward(self, img, txt, vec, pe):
            self.txt_attn.norm.flag = txt[..., 0] > 0.5
            return super().forward(img=img, txt=txt, vec=vec, pe=pe)

    torch.manual_seed(seed)
    net = F.IntegratedFluxTransformer2DModel(in_channels=4, vec_in_dim=8, context_in_dim=32, depth=4).eval()
    with torch.no_grad():
        net.txt_in.weight[0].zero_()
        net.txt_in.weight[0, 0] = 1.0
        net.txt_in.bias[0] = 0.0
        for block in net.double_blocks[:2]:
            block.txt_mod.lin.weight.zero_()
            block.txt_mod.lin.bias.zero_()
        block = net.double_blocks[2]
        block.__class__ = Block
        head = block.img_attn.norm.query_norm.scale.shape[0]
        block.img_attn.norm, block.txt_attn.norm = QNorm(head), KNorm(head)
    return net


@pytest.fixture(scope="module")
def quadrant(flux):
    with forge.active():
        from backend.diffusion_engine import FluxEngine

        flux.engines["flux-quadrant"] = FluxEngine(host_harness.model("sd1"), network=quadrant_flux())
    return flux


@pytest.mark.parametrize("mode", ["attention", "intersect"])
def test_flux_masks_open_where_the_concepts_words_are_attended(quadrant, mode):
    """Only the last step guided (Euler, whose last step lands on x0): the image moves from
    the same run at scale 0 exactly where the mask let the term through — the quadrant."""
    kwargs = dict(kind="flux-quadrant", cfg_scale=1.0, steps=4, sampler_name="Euler", width=128, height=128)
    values = dict(concepts="smile :: threshold=0.75\n-glasses :: threshold=0.75", warmup="3")
    none = quadrant.generate(sega_values(scale=0.0, mask=mode, **values), **kwargs).images
    masked = quadrant.generate(sega_values(mask=mode, **values), **kwargs)
    assert quadrant.reported == [] and masked.comments == {}
    assert masked.p.extra_generation_params["SEGA mask"] == mode
    diff = (masked.images - none).abs()
    assert diff[..., :8, :8].max() > 1e-4
    diff[..., :8, :8] = 0
    assert diff.max() == 0
    unmasked = quadrant.generate(sega_values(**values), **kwargs).images
    assert (unmasked - none)[..., 8:, 8:].abs().max() > 1e-4  # without a mask the term is everywhere


def record_concept_attention(monkeypatch, module, qk):
    """[(M¹ as SEGA read it, [(q, k) of every attention call of SEGA's concept call, as
    `qk(*args)` makes them of the arguments of `module.attention`])], one per read-back.
    Call inside `forge.active()`."""
    from sega_webui import forge as forge_path
    from sega_webui import joint_attention

    calls, collected, inside = [], [], []
    real_attention, real_collect = module.attention, joint_attention.JointAttention.collect
    real_predictions = forge_path.ForgePatch._predictions

    def attention(*args, **kwargs):
        if inside:
            calls.append(qk(*args, **kwargs))
        return real_attention(*args, **kwargs)

    def predictions(self, *a, **kw):
        inside.append(1)
        calls.clear()
        try:
            return real_predictions(self, *a, **kw)
        finally:
            inside.clear()

    def collect(self, grid):
        out = real_collect(self, grid)
        collected.append((out.clone(), list(calls)))
        return out

    monkeypatch.setattr(module, "attention", attention)
    monkeypatch.setattr(forge_path.ForgePatch, "_predictions", predictions)
    monkeypatch.setattr(joint_attention.JointAttention, "collect", collect)
    return collected


def test_flux_joint_attention_maps_equal_an_explicit_softmax(flux, monkeypatch):
    """The maps SEGA reads from the hooks on the q/k norms equal softmax(q·kᵀ/√d) taken over
    the q and k the model's own attention receives after RoPE, image queries × the concept's
    token columns, summed over heads, averaged over the double blocks read (1 and 2 of 4)."""
    with forge.active():
        from backend.nn import flux as F


        def qk(q, k, v, pe):  # what the attention receives, after RoPE
            return tuple(t.double() for t in F.apply_rope(q, k, pe))

        collected = record_concept_attention(monkeypatch, F, qk)
        result = flux.generate(sega_values("smile\n-glasses", warmup="0", mask="attention"), kind="flux",
                               cfg_scale=1.0, steps=2, batch_size=2, width=64, height=64)
        engine = flux.engines["flux"]
    assert result.comments == {} and flux.reported == []
    assert len(collected) == 2
    maps, calls = collected[1]
    assert len(calls) == 4 + 2  # SEGA's call: 4 double blocks, 2 single ones
    assert calls[0][0].shape[0] == 4 + 2  # 2 concepts × 2 images, then the negative prompt's 2 rows
    calls = [(q[:4], k[:4]) for q, k in calls]
    tokens = engine.text_processing_engine_t5
    columns = torch.zeros(4, 256, dtype=torch.float64)
    for i, text in enumerate(["smile", "glasses"]):
        n = tokens.tokenize_line(text)[1] - 1  # its tokens, less the end token
        columns[2 * i : 2 * i + 2, :n] = 1.0
    total, heads = 0, 0
    for q, k in calls[1:3]:
        probs = (q[:, :, 256:] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(dim=-1)[..., :256]
        total = total + torch.einsum("rhqt,rt->rq", probs, columns)
        heads += q.shape[1]
    want = (total / heads).view(4, 4, 4)
    torch.testing.assert_close(maps.double(), want, rtol=1e-4, atol=1e-6)
    assert want.std() > 1e-4


def test_flux_hooks_come_off_after_each_concept_call(flux, monkeypatch):
    with forge.active():
        from sega_webui import forge as forge_path

        blocks = list(flux.engines["flux"].network.double_blocks)
        seen = []

        def predictions(self, *a, **kw):
            seen.append(sum(len(b._forward_pre_hooks) + len(b.img_attn.norm._forward_hooks) for b in blocks))
            raise RuntimeError("the concepts' call failed")

        monkeypatch.setattr(forge_path.ForgePatch, "_predictions", predictions)
        result = flux.generate(sega_values(warmup="0", mask="attention"), kind="flux", cfg_scale=1.0, steps=2)
    assert seen and seen[0] > 0
    assert "the concepts' call failed" in " ".join(result.comments)
    assert all(not b._forward_pre_hooks and not b.img_attn.norm._forward_hooks and not b.txt_attn.norm._forward_hooks
               for b in blocks)


def test_flux_shaped_model_without_double_blocks_has_masks_off_with_the_reason(flux):
    with forge.active():
        from backend.diffusion_engine import FluxEngine
        from backend.nn.flux import IntegratedFluxTransformer2DModel

        flux.engines["flux-single"] = FluxEngine(host_harness.model("sd1"), network=IntegratedFluxTransformer2DModel(
            in_channels=4, vec_in_dim=8, context_in_dim=32, depth=0).eval())
    baseline = flux.generate(None, kind="flux-single", cfg_scale=1.0, steps=3).images
    masked = flux.generate(sega_values(mask="attention", warmup="0"), kind="flux-single", cfg_scale=1.0, steps=3)
    assert masked.comments == {"SEGA off: " + flux.w.host.forge.patcher.NO_CROSS_ATTENTION: 1}
    assert torch.equal(masked.images, baseline)
    assert not torch.equal(flux.generate(sega_values(warmup="0"), kind="flux-single", cfg_scale=1.0,
                                         steps=3).images, baseline)


def test_flux_intersect_uses_the_attention_mask_alone_above_timestep_800(flux, monkeypatch):
    """A flow model's timestep is 1000·σ: LEDITS++'s first steps (timestep > 800) are σ > 0.8."""
    seen = []
    real = SegaGuidance.step

    def spy(self, step, uncond, concepts, *args, early=None, **kwargs):
        seen.append(early)
        return real(self, step, uncond, concepts, *args, early=early, **kwargs)

    sigmas = []

    def post(params):
        sigmas.append(float(params.sigma[0]))

    monkeypatch.setattr(SegaGuidance, "step", spy)
    with forge.active() as w:
        w.script_callbacks.callbacks["cfg_denoiser"].append(post)
        try:
            result = flux.generate(sega_values(warmup="0", mask="intersect"), kind="flux", cfg_scale=1.0, steps=6,
                                   sampler_name="Euler")
        finally:
            w.script_callbacks.callbacks["cfg_denoiser"].remove(post)
    assert result.comments == {}
    assert [bool(e.all()) for e in seen] == [s > 0.8 for s in sigmas]
    assert True in [s > 0.8 for s in sigmas] and False in [s > 0.8 for s in sigmas]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM2 a", "DPM++ 2M SDE"])
def test_flux_photo_edit_reconstructs_with_no_concept_and_edits_with_one(flux, monkeypatch, sampler):
    """The inversion runs at CFG 1 through the sampler Forge really runs on Flux — for Euler a
    and DPM2 a their rectified-flow variants (k_diffusion/sampling.py dispatches on the Flux
    predictor) — and targets Flux's own noisy latents, σ·n + (1 − σ)·x0 (its predictor's
    `noise_scaling`), not x0 + σ·n: any targets reconstruct, only the model's own keep its
    predictions where it was trained."""
    photo = host_harness.init_latent(64, 64)
    kwargs = dict(kind="flux", img2img=True, denoising_strength=1.0, init_images=photo, sampler_name=sampler,
                  cfg_scale=1.0, steps=6)
    edit = flux.w.host.edit
    real_invert, noising = edit.invert, []

    def invert(*args, add_noise=None, **kw):
        noising.append(add_noise)
        return real_invert(*args, add_noise=add_noise, **kw)

    monkeypatch.setattr(edit, "invert", invert)
    edit.clear_cache()
    back = flux.generate(sega_values("", invert=True), **kwargs)
    x0, n, sigma = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor(0.3)
    assert len(noising) == 1 and torch.allclose(noising[0](x0, n, sigma), 0.3 * n + 0.7 * x0)
    # The inversion and the sampling pass make the same calls of Forge's (B rows at CFG 1):
    # the photo comes back to float rounding.
    assert back.comments == {} and (back.images - photo).abs().max() < 1e-6
    edit.clear_cache()
    edited = flux.generate(sega_values("smile", invert=True, warmup="0"), **kwargs)
    assert edited.comments == {} and (edited.images - photo).abs().max() > 1e-3
    # The inversion makes Forge's own calls of B rows, as plain img2img does at CFG 1; the
    # sampling pass adds SEGA's call (the concept and the negative prompt) to each.
    calls = flux.calls("flux")
    m = calls.count(2)
    assert m > 0 and calls == [1] * m + [1, 2] * m


def test_an_edits_calls_give_the_model_the_kept_region_as_the_sampler_carries_it(host):
    """Forge's CFG denoiser noises the kept region of each call's input afresh
    (sd_samplers_cfg_denoiser.py, dfdcbab6): in an edit the inversion's call and the sampling
    pass's call of the same step must give the model the same input, which they can only do
    with the sampler's own latents there; outside edits Forge's blend is left alone."""
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1
    kwargs = dict(img2img=True, denoising_strength=1.0, init_images=host_harness.init_latent(64, 64),
                  sampler_name="Euler a", mask=mask, steps=5)
    seen = []

    def record(params):
        pass_ = getattr(getattr(params.denoiser.p, "sega_run", None), "current", None)
        seen.append((bool(getattr(pass_, "inverting", False)), params.x.clone()))

    host.w.host.edit.clear_cache()
    with forge.active() as w:
        w.script_callbacks.callbacks["cfg_denoiser"].append(record)
        try:
            host.generate(sega_values("glasses :: scale=0", invert=True, warmup="0"), **kwargs)
            edit_calls = list(seen)
            seen.clear()
            plain = host.generate(sega_values("glasses :: scale=0", warmup="0"), **kwargs)
        finally:
            w.script_callbacks.callbacks["cfg_denoiser"].remove(record)
        denoiser = plain.p.sampler.model_wrap_cfg
        predictor = host.engine().forge_objects.unet.model.predictor
        assert "forward" not in vars(denoiser) and "noise_scaling" not in vars(predictor)
    inverting = [x for flag, x in edit_calls if flag]
    sampling = [x for flag, x in edit_calls if not flag]
    assert len(inverting) == len(sampling) == 5
    for a, b in zip(inverting, sampling, strict=True):
        assert torch.equal(a, b)
    # Without an edit (same seed, same start latent) the model sees Forge's fresh draws there.
    assert len(seen) == 5 and torch.equal(seen[0][1][..., :4], sampling[0][..., :4])
    assert not all(torch.equal(x[..., 4:], y[..., 4:]) for (_, x), y in zip(seen, sampling, strict=True))


@pytest.fixture(scope="module")
def sd3(host):
    with forge.active():
        from backend.diffusion_engine import SD3Engine

        host.engines["sd3"] = SD3Engine(host_harness.model("sd1+attn"))
    return host


@pytest.mark.parametrize("t5", [False, True])
def test_sd3_in_forge_is_guided_and_its_masks_equal_an_explicit_softmax(sd3, monkeypatch, t5):
    """Forge's SD3 (backend/nn/mmditx.py, the WebUI's MMDiT layout): SEGA acts in flow
    space, off is bit-identical, and M¹ from the joint blocks 1 and 2 of 4 equals the softmax
    over the q and k the model's attention receives, at CLIP's word columns and, with T5 on,
    T5's behind the 77 CLIP tokens."""
    import sys

    with forge.active() as w:
        import backend.nn.mmditx  # noqa: F401


        layout = sys.modules["backend.nn.mmditx._webui_layout"]
        monkeypatch.setattr(w.shared.opts, "sd3_enable_t5", t5, raising=False)
        kwargs = dict(kind="sd3", sampler_name="Euler", steps=4, width=128, height=128, batch_size=2)
        baseline = sd3.generate(None, **kwargs).images
        assert torch.equal(sd3.generate(sega_values(enabled=False), **kwargs).images, baseline)
        on = sd3.generate(sega_values(warmup="0"), **kwargs)
        assert on.comments == {} and not torch.equal(on.images, baseline)

        def qk(q, k, v, heads):  # [B, L, heads·d] → [B, heads, L, d]
            b, n, dim = q.shape
            return tuple(t.view(b, n, heads, dim // heads).transpose(1, 2).double() for t in (q, k))

        collected = record_concept_attention(monkeypatch, layout, qk)
        masked = sd3.generate(sega_values("smile\n-glasses", warmup="0", mask="attention"), **kwargs)
    assert masked.comments == {} and sd3.reported == []
    assert masked.p.extra_generation_params["SEGA mask"] == "attention"
    assert not torch.equal(masked.images, on.images)
    tokenizer = host_harness.model("sd1+attn").tokenizer
    columns = torch.zeros(4, 77 + 256, dtype=torch.float64)
    for i, text in enumerate(["smile", "glasses"]):
        n = len(tokenizer(text, add_special_tokens=False).input_ids)
        columns[2 * i : 2 * i + 2, 1 : 1 + n] = 1.0
        if t5:
            columns[2 * i : 2 * i + 2, 77 : 77 + n] = 1.0
    assert len(collected) == 4
    for maps, blocks in collected:
        assert len(blocks) == 4
        total, heads = 0, 0
        for q, k in blocks[1:3]:  # the concepts' rows, not the negative prompt's behind them
            q, k = q[:4], k[:4]
            probs = (q[:, :, 333:] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(dim=-1)[..., :333]
            total = total + torch.einsum("rhqt,rt->rq", probs, columns)
            heads += q.shape[1]
        torch.testing.assert_close(maps.double(), (total / heads).view(4, 8, 8), rtol=1e-4, atol=1e-6)
    assert maps.std() > 1e-4


def test_flux_guidance_maps_and_infotext(flux):
    result = flux.generate(sega_values(warmup="0", show_maps=True, mask="intersect"), kind="flux", cfg_scale=1.0,
                           steps=3, pil_images=True)
    assert flux.reported == [] and result.comments == {}
    assert len(result.images) == 1 + 3  # the image, two concepts and all
    params = result.p.extra_generation_params
    assert params["SEGA mask"] == "intersect" and "SEGA concepts" in params


@pytest.mark.parametrize(("kind", "sampler", "cfg"), [("flux", "Euler a", 1.0), ("flux", "DPM2 a", 1.0),
                                                      ("flux", "DPM++ 2M SDE", 1.0), ("sd3", "Euler a", 5.0),
                                                      ("sd3", "DPM++ SDE", 5.0)])
def test_flow_model_photo_edit_with_an_inpaint_mask_gives_the_photo_back(flux, sd3, kind, sampler, cfg):
    """Issue 27 on the flow models: Forge noises the kept region of every call's input as
    σ·n + (1 − σ)·x0 with a fresh n, which the edit's calls must not see either."""
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1
    photo = host_harness.init_latent(64, 64)
    kwargs = dict(kind=kind, img2img=True, denoising_strength=1.0, init_images=photo, sampler_name=sampler,
                  cfg_scale=cfg, steps=6, mask=mask)
    flux.w.host.edit.clear_cache()
    back = flux.generate(sega_values("glasses :: scale=0", invert=True, warmup="0"), **kwargs)
    assert back.comments == {} and flux.reported == []
    assert (back.images - photo).abs().max() < 1e-5
    edited = flux.generate(sega_values("smile", invert=True, warmup="0"), **kwargs)
    change = (edited.images - photo).abs()
    assert change[..., :4].max() > 1e-3 and change[..., 4:].max() == 0
