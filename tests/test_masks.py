"""LEDITS++'s implicit masks: the math against diffusers' LEditsPPPipelineStableDiffusion, and
the recomputed attention against the probabilities the layers really use."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import tiny_models
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from sega import masks
from sega.guidance import ConceptGuidance, SegaGuidance
from sega_webui import attention, compat

ledits = pytest.importorskip("diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion")


def _ledits_step(unet, latents, t, uncond, edits, tokens, thresholds, scales, reverse, intersect):
    """One LEDITS++ editing step with diffusers' own attention processors, attention store
    and smoothing; the guidance arithmetic reproduced from its __call__ (diffusers 0.42.1)."""
    store = ledits.LeditsAttentionStore(average=False, batch_size=1, max_size=(16 / 4) * (16 / 4), max_resolution=None)
    ledits.LEditsPPPipelineStableDiffusion.prepare_unet(SimpleNamespace(unet=unet, enabled_editing_prompts=len(edits)), store)
    try:
        with torch.no_grad():
            out = unet(latents.repeat(1 + len(edits), 1, 1, 1), t, encoder_hidden_states=torch.cat([uncond, edits])).sample
    finally:
        unet.set_attn_processor(AttnProcessor2_0())  # fused: no probabilities for our hooks to read
    eps_uncond, *eps_edits = out.chunk(1 + len(edits))
    smoothing = ledits.LeditsGaussianSmoothing("cpu")
    maps, attn_masks, total = [], [], torch.zeros_like(eps_uncond)
    for c, eps in enumerate(eps_edits):
        guidance = (eps - eps_uncond) * (-1 if reverse[c] else 1) * scales[c]
        agg = store.aggregate_attention(attention_maps=store.step_store, prompts=[str(i) for i in range(len(edits))],
                                        res=(4, 4), from_where=["up", "down"], is_cross=True, select=c)
        attn_map = agg[:, :, :, 1 : 1 + tokens[c]].sum(dim=3)
        maps.append(attn_map)
        attn_map = smoothing(F.pad(attn_map.unsqueeze(1), (1, 1, 1, 1), mode="reflect")).squeeze(1)
        tmp = torch.quantile(attn_map.flatten(start_dim=1), thresholds[c], dim=1)
        attn_mask = torch.where(attn_map >= tmp.unsqueeze(1).unsqueeze(1).repeat(1, 4, 4), 1.0, 0.0)
        attn_mask = F.interpolate(attn_mask.unsqueeze(1), guidance.shape[-2:]).repeat(1, 4, 1, 1)
        attn_masks.append(attn_mask)
        if intersect[c] and t <= 800:
            q = guidance.abs().sum(dim=1, keepdim=True).repeat(1, 4, 1, 1)
            tmp = torch.quantile(q.flatten(start_dim=2), thresholds[c], dim=2, keepdim=False)
            guidance = guidance * torch.where(q >= tmp[:, :, None, None], torch.ones_like(guidance),
                                              torch.zeros_like(guidance)) * attn_mask
        else:
            guidance = guidance * attn_mask
        total += guidance
    return eps_uncond, torch.stack(eps_edits), torch.stack(maps), torch.stack(attn_masks), total


@pytest.mark.parametrize("t", [500, 900], ids=["intersect", "early: M¹ alone"])
def test_masks_and_term_match_diffusers_ledits_pp(t):
    torch.manual_seed(3)
    unet = tiny_models.quarter_unet(seed=5)
    latents, uncond, edits = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32), torch.randn(2, 77, 32)
    tokens, thresholds, scales, reverse = [3, 5], [0.9, 0.7], [5.0, 3.0], [False, True]
    modes = ["intersect", "attention"]
    ref_uncond, ref_edits, ref_maps, ref_masks, ref_total = _ledits_step(
        unet, latents, t, uncond, edits, tokens, thresholds, scales, reverse, [m == "intersect" for m in modes])

    # Ours: the UNet's own (fused) attention, our hooks recomputing the concept rows' share.
    hooks = attention.ConceptAttention(unet)
    columns = torch.zeros(2, 77)
    for c, n in enumerate(tokens):
        columns[c, 1 : 1 + n] = 1.0
    hooks.arm(1, 2, (4, 4), columns)  # rows: [uncond | edit 1 | edit 2]
    try:
        with torch.no_grad():
            out = unet(latents.repeat(3, 1, 1, 1), t, encoder_hidden_states=torch.cat([uncond, edits])).sample
        maps = hooks.collect((4, 4)).view(2, 1, 4, 4)
    finally:
        hooks.remove()
    torch.testing.assert_close(out[:1], ref_uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps, ref_maps, rtol=1e-5, atol=1e-6)  # same probabilities in

    m1 = masks.attention_mask(ref_maps, torch.tensor(thresholds), (16, 16))
    assert torch.equal(m1.expand(-1, -1, 4, -1, -1), ref_masks)  # same M¹ out
    engine = SegaGuidance([ConceptGuidance(scale=s, threshold=q, warmup=0, reverse=r, mask=m)
                           for s, q, r, m in zip(scales, thresholds, reverse, modes, strict=True)], momentum_scale=0.0)
    term = engine.step(0, ref_uncond, ref_edits, attention=ref_maps, early=torch.tensor([t > 800]))
    torch.testing.assert_close(term, ref_total, rtol=1e-5, atol=1e-6)  # same masked term out
    assert term.abs().max() > 0 and (term == 0).any()
    # and not by accident: SEGA's own threshold gives another term
    plain = SegaGuidance([ConceptGuidance(scale=s, threshold=q, warmup=0, reverse=r)
                          for s, q, r in zip(scales, thresholds, reverse, strict=True)], momentum_scale=0.0)
    assert not torch.allclose(plain.step(0, ref_uncond, ref_edits), ref_total)


def test_noise_mask_is_the_channel_summed_quantile():
    torch.manual_seed(0)
    psi = torch.randn(2, 3, 4, 8, 8)
    thresholds = torch.tensor([0.9, 0.5])
    m2 = masks.noise_mask(psi, thresholds)
    for k in range(2):
        for b in range(3):
            s = psi[k, b].abs().sum(0)
            assert torch.equal(m2[k, b, 0], s >= torch.quantile(s.flatten(), thresholds[k].item()))
    assert m2[0].float().mean() < m2[1].float().mean()


def test_smoothing_kernel_is_diffusers_kernel():
    assert torch.allclose(masks.smoothing_kernel(), ledits.LeditsGaussianSmoothing("cpu").weight, atol=1e-7)


def test_grid_is_two_downsamplings_of_the_latent():
    assert masks.attention_grid(64, 64) == (16, 16)  # SD 1.5 at 512²
    assert masks.attention_grid(128, 96) == (32, 24)  # SDXL at 1024×768
    assert masks.attention_grid(90, 75) == (23, 19)  # odd sizes round up, as stride-2 convolutions do


def test_inpainting_region_limits_both_masks():
    torch.manual_seed(1)
    psi = torch.randn(1, 1, 4, 16, 16)
    maps = torch.rand(1, 1, 4, 4)
    maps[..., 3, 3] = 10.0  # the strongest attention lies outside the region
    region = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    region[..., :8, :8] = True
    mask = masks.concept_masks(psi, torch.tensor([0.75]), torch.tensor([True]), maps, region)
    assert mask[..., 8:, :].abs().sum() == 0 and mask[..., :, 8:].abs().sum() == 0
    assert mask[..., :8, :8].sum() > 0  # the quantile is taken inside the region, so something is left


def test_threshold_mode_is_bit_identical_and_masks_need_maps():
    torch.manual_seed(2)
    u, c = torch.randn(2, 4, 8, 8), torch.randn(2, 2, 4, 8, 8)
    a = SegaGuidance([ConceptGuidance(warmup=0), ConceptGuidance(warmup=0, reverse=True)])
    b = SegaGuidance([ConceptGuidance(warmup=0, mask="threshold"), ConceptGuidance(warmup=0, reverse=True)])
    for step in range(3):
        assert torch.equal(a.step(step, u, c), b.step(step, u, c, attention=torch.rand(2, 2, 2, 2)))
    assert not a.needs_attention(0)
    m = SegaGuidance([ConceptGuidance(warmup=0, mask="attention"), ConceptGuidance(warmup=0)])
    assert m.needs_attention(0)
    with pytest.raises(ValueError, match="attention maps"):
        m.step(0, u, c)


def test_mixed_modes_keep_threshold_concepts_as_they_were():
    torch.manual_seed(4)
    u, c = torch.randn(1, 4, 8, 8), torch.randn(2, 1, 4, 8, 8)
    maps = torch.rand(2, 1, 2, 2)
    mixed = SegaGuidance([ConceptGuidance(warmup=0), ConceptGuidance(warmup=0, mask="attention")], momentum_scale=0)
    only_first = SegaGuidance([ConceptGuidance(warmup=0), ConceptGuidance(warmup=0, weight=0)], momentum_scale=0)
    only_second = SegaGuidance([ConceptGuidance(warmup=0, weight=0), ConceptGuidance(warmup=0, mask="attention")],
                               momentum_scale=0)
    first = only_first.step(0, u, c[:1])
    second = only_second.step(0, u, c[1:], attention=maps[1:])
    torch.testing.assert_close(mixed.step(0, u, c, attention=maps), first + second)


# ---- the recomputed attention ---------------------------------------------------------------


class _Root(torch.nn.Module):
    """Two ldm-named cross-attention layers on one grid, and one in the middle block."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.input_blocks = torch.nn.ModuleList([tiny_models._Block(16, 32)])
        self.middle_block = tiny_models._Block(16, 32)
        self.output_blocks = torch.nn.ModuleList([tiny_models._Block(16, 32)])

    def forward(self, x, context):
        x = x + self.input_blocks[0].attn2(x, context=context)
        x = x + self.middle_block.attn2(x, context)  # positional context, as some callers pass it
        return x + self.output_blocks[0].attn2(x, context=context)


@pytest.mark.parametrize("optimisation", sorted(tiny_models.OPTIMISATIONS))
def test_recomputed_probabilities_equal_the_plain_softmax(optimisation, monkeypatch):
    root = _Root()
    x, context = torch.randn(5, 16, 16), torch.randn(5, 77, 32)
    columns = (torch.rand(3, 77) > 0.5).float()
    with torch.no_grad():
        plain_out = root(x, context)
        expected = []
        for block in (root.input_blocks[0], root.output_blocks[0]):
            expected.append(block.attn2.last_probs[1:4])  # the rows the plain forward kept
        want = sum(torch.einsum("rhqt,rt->rq", p, columns) for p in expected) / (2 * 2)
    monkeypatch.setattr(tiny_models.LdmCrossAttention, "forward", tiny_models.OPTIMISATIONS[optimisation])
    hooks = attention.ConceptAttention(root)
    assert [n for n, _ in hooks.layers] == ["input_blocks.0.attn2", "output_blocks.0.attn2"]
    hooks.arm(1, 3, (4, 4), columns)
    try:
        assert compat.hooked_attention(root) == []  # our hooks are not another extension's
        with torch.no_grad():
            out = root(x, context)
        got = hooks.collect((4, 4)).view(3, 16)
    finally:
        hooks.remove()
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-6)  # the hooks change nothing
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(not m._forward_hooks for m in root.modules())  # and are gone afterwards


def test_rows_split_over_several_calls_and_batch_order():
    """Concept rows in the middle of a call cut into chunks land where they belong, and a
    row's map is what that row alone would give."""
    root = _Root()
    torch.manual_seed(8)
    x, context = torch.randn(8, 16, 16), torch.randn(8, 77, 32)
    columns = (torch.rand(4, 77) > 0.3).float()
    hooks = attention.ConceptAttention(root)
    try:
        hooks.arm(2, 4, (4, 4), columns)
        with torch.no_grad():
            for chunk in range(0, 8, 3):  # the host's chunked evaluation: 3 rows at a time
                root(x[chunk : chunk + 3], context[chunk : chunk + 3])
        together = hooks.collect((4, 4))
        for r in range(4):
            hooks.arm(0, 1, (4, 4), columns[r : r + 1])
            with torch.no_grad():
                root(x[2 + r : 3 + r], context[2 + r : 3 + r])
            torch.testing.assert_close(hooks.collect((4, 4)), together[r : r + 1], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(together[0], together[1])
    finally:
        hooks.remove()


def test_missing_grid_and_stale_hooks():
    root = _Root()
    hooks = attention.ConceptAttention(root)
    hooks.arm(0, 1, (8, 8), torch.ones(1, 77))  # no layer has an 8 × 8 grid
    with torch.no_grad():
        root(torch.randn(1, 16, 16), torch.randn(1, 77, 32))
    with pytest.raises(attention.MaskError, match="8×8 grid"):
        hooks.collect((8, 8))
    # a generation that died leaves its hooks; the next pass's hooks replace them
    again = attention.ConceptAttention(root)
    again.install()
    assert sum(len(m._forward_hooks) for m in root.modules()) == 2
    again.remove()
    assert sum(len(m._forward_hooks) for m in root.modules()) == 0


def test_token_positions_skip_start_end_and_padding():
    ldm = tiny_models.attention_ldm("sd1")
    tok = tiny_models.StandInTokenizer(ldm)
    assert attention.token_positions(tok, "abc") == [1, 2, 3]
    long = attention.token_positions(tok, "x" * 80)
    assert long == list(range(1, 76)) + list(range(78, 83))  # the second chunk's own start skipped
    cols = attention.token_columns(tok, [["ab"], ["abcd", "a"]], (0, None), (1, 0), 2, 77, "cpu")
    assert cols.shape == (4, 77) and cols[0].sum() == 4 and cols[2].sum() == 2  # concept-major, B rows each
    assert torch.equal(cols[0], cols[1])
    sdxl = tiny_models.attention_ldm("sdxl")
    assert attention.find_tokenizer(sdxl) is sdxl.cond_stage_model.embedders[0]
    with pytest.raises(attention.MaskError, match="tokenizer"):
        attention.find_tokenizer(tiny_models.TinyLDM("sd1"))


def test_early_rows_follow_timestep_800():
    ac = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, 0)
    s800 = ((1 - ac[800]) / ac[800]).sqrt()
    sigma = torch.stack([s800 * 0.99, s800 * 1.01])
    assert attention.early_rows(sigma, False, ac).tolist() == [False, True]
    assert attention.early_rows(torch.tensor([800.0, 801.0]), True, None).tolist() == [False, True]


def test_sdxl_shaped_unet_uses_its_fifty_latent4_layers():
    """SDXL's block layout in miniature (transformer depths 2 and 10, two layers per down
    block, three per up block): on the latent/4 grid, input blocks 7–8 and output blocks 0–2
    hold 2·10 + 3·10 = 50 cross-attention layers; the middle block shares the grid and is
    left out; the latent/2 layers do not count."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16, 32), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(1, 2, 4), cross_attention_dim=16,
        use_linear_projection=True, norm_num_groups=8,
    ).eval()
    hooks = attention.ConceptAttention(unet)
    hooks.arm(1, 1, masks.attention_grid(16, 16), torch.ones(1, 77))
    try:
        with torch.no_grad():
            unet(torch.randn(2, 4, 16, 16), 500, encoder_hidden_states=torch.randn(2, 77, 16))
        call = hooks.call
        seen = [name for name, m in hooks.layers if m in call.heads]
        maps = hooks.collect((4, 4))
    finally:
        hooks.remove()
    assert len(seen) == 50 and all(n.startswith(("down_blocks.2.", "up_blocks.0.")) for n in seen)
    assert not any("mid_block" in n for n, _ in hooks.layers)
    torch.testing.assert_close(maps.sum(), torch.tensor(16.0))  # every column: each query's probabilities sum to 1


def test_token_columns_follow_a_mark_token_in_front_and_padding_behind():
    base = torch.zeros(1, 77)
    base[0, 1:4] = 1.0
    call = attention._Call(0, 1, 16, base)
    assert torch.equal(call.columns_for(77), base)
    marked = call.columns_for(78)  # ControlNet's mark still in front of the tokens
    assert marked[0, 2:5].tolist() == [1.0] * 3 and marked.sum() == 3 and marked[0, :2].sum() == 0
    padded = call.columns_for(154)  # padded with an empty chunk to the prompt's length
    assert torch.equal(padded[:, :77], base) and padded[:, 77:].sum() == 0
