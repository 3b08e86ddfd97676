import pytest
import torch

from sega.guidance import ConceptGuidance, SegaGuidance, abs_quantile, threshold_guidance


def test_abs_quantile_is_torch_quantile_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 64, 257):
        values = torch.randn(3, 2, 4, n, generator=g)
        qs = torch.tensor([0.0, 0.9, 0.975])
        ours = abs_quantile(values, qs.view(3, 1, 1).expand(3, 2, 4))
        for i in range(3):
            ref = torch.quantile(values[i].abs(), float(qs[i]), dim=-1)
            assert torch.equal(ours[i], ref)


def test_threshold_is_per_image_and_channel():
    psi = torch.zeros(1, 2, 2, 4, 4)
    psi[0, 0, 0] = 100.0  # one loud channel must not silence the others
    psi[0, 1, 1, 0, 0] = 1.0
    out = threshold_guidance(psi, torch.tensor([0.9]))
    assert out[0, 1, 1, 0, 0] == 1.0
    assert torch.equal(out[0, 0, 0], psi[0, 0, 0])


def test_region_thresholds_count_only_the_region():
    g = torch.Generator().manual_seed(1)
    psi = torch.randn(2, 2, 4, 8, 8, generator=g)
    region = torch.zeros(4, 8, 8, dtype=torch.bool)
    region[:, 1:4, 2:7] = True  # 15 of 64 entries per channel
    thresholds = torch.tensor([0.8, 0.95])
    out = threshold_guidance(psi, thresholds, region)
    assert torch.equal(out[..., ~region[0]], torch.zeros_like(out[..., ~region[0]]))
    for k in range(2):
        for b in range(2):
            for c in range(4):
                inside = psi[k, b, c][region[c]]
                q = torch.quantile(inside.abs(), float(thresholds[k]))
                expected = torch.where(inside.abs() >= q, inside, torch.zeros_like(inside))
                assert torch.equal(out[k, b, c][region[c]], expected)
    assert torch.equal(threshold_guidance(psi, thresholds, torch.ones(4, 8, 8, dtype=torch.bool)),
                       threshold_guidance(psi, thresholds))


def test_step_with_a_region_is_zero_outside_and_keeps_momentum_there_at_zero():
    uncond, concepts = _eps(1)
    region = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    region[..., :4] = True
    guidance = SegaGuidance([ConceptGuidance(warmup=0)], momentum_scale=0.5)
    for step in range(3):
        term = guidance.step(step, uncond, concepts, region)
        assert torch.equal(term[..., 4:], torch.zeros_like(term[..., 4:]))
        assert term[..., :4].abs().max() > 0
    assert torch.equal(guidance.momentum[..., 4:], torch.zeros_like(guidance.momentum[..., 4:]))


def _eps(n, b=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 8, 8, generator=g).to(dtype), torch.randn(n, b, 4, 8, 8, generator=g).to(dtype)


def test_rows_needed_skips_what_cannot_matter():
    concepts = [
        ConceptGuidance(warmup=2, cooldown=5),
        ConceptGuidance(warmup=0, weight=0.0),
        ConceptGuidance(warmup=4),
    ]
    with_momentum = SegaGuidance(concepts, momentum_scale=0.3)
    assert [with_momentum.rows_needed(i) for i in (0, 2, 4, 5)] == [(0, 2), (0, 2), (0, 2), (2,)]
    no_momentum = SegaGuidance(concepts, momentum_scale=0.0)
    assert [no_momentum.rows_needed(i) for i in (0, 2, 4, 5)] == [(), (0,), (0, 2), (2,)]


def _run(concepts, steps, momentum_scale, skip):
    """Drive the engine over `steps`, evaluating either only the needed rows or all."""
    sega = SegaGuidance(concepts, momentum_scale=momentum_scale, momentum_beta=0.5)
    outs = []
    for i in range(steps):
        eps_u, eps_all = _eps(len(concepts), seed=i)
        needed = sega.rows_needed(i)
        if not skip:
            # Feed every concept, as the reference does, through a fresh all-rows engine path.
            needed_all = tuple(range(len(concepts)))
            sega.rows_needed = lambda step, _n=needed_all: _n  # type: ignore[method-assign]
            needed = needed_all
        eps_c = eps_all[list(needed)] if needed else None
        outs.append(sega.step(i, eps_u, eps_c))
    return outs


@pytest.mark.parametrize("momentum_scale", [0.0, 0.4])
def test_skipping_rows_changes_nothing(momentum_scale):
    concepts = [
        ConceptGuidance(warmup=1, cooldown=4, threshold=0.9),
        ConceptGuidance(warmup=3, weight=0.0),
        ConceptGuidance(warmup=2, reverse=True, scale=3.0),
    ]
    skipped = _run(concepts, 8, momentum_scale, skip=True)
    full = _run(concepts, 8, momentum_scale, skip=False)
    for a, b in zip(skipped, full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert any(t.abs().max() > 0 for t in skipped)


def test_momentum_keeps_acting_after_every_concept_cooled_down():
    sega = SegaGuidance([ConceptGuidance(warmup=0, cooldown=2)], momentum_scale=0.5, momentum_beta=0.5)
    for i in range(2):
        eps_u, eps_c = _eps(1, seed=i)
        sega.step(i, eps_u, eps_c)
    eps_u, _ = _eps(1, seed=9)
    assert sega.rows_needed(2) == ()
    term = sega.step(2, eps_u, None)
    assert term.abs().max() > 0  # γ = s_m·ν, as in the reference


def test_no_warm_weight_gives_zero_instead_of_nan():
    # Concept 0 is warm but weighted 0, concept 1 not yet warm: the reference computes 0/0.
    sega = SegaGuidance([ConceptGuidance(warmup=0, weight=0.0), ConceptGuidance(warmup=5)], momentum_scale=0.2)
    eps_u, eps_c = _eps(2)
    term = sega.step(0, eps_u, eps_c[list(sega.rows_needed(0))])
    assert torch.equal(term, torch.zeros_like(eps_u))


def test_partial_warmup_applies_only_warm_concepts_normalised():
    a, b = ConceptGuidance(warmup=0, weight=3.0, threshold=0.0), ConceptGuidance(warmup=5, weight=1.0)
    sega = SegaGuidance([a, b], momentum_scale=0.0)
    eps_u, eps_c = _eps(2)
    term = sega.step(0, eps_u, eps_c[[0]])
    torch.testing.assert_close(term, 5.0 * (eps_c[0] - eps_u))  # weight 3 / 3 = 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_float_dtype(dtype):
    sega = SegaGuidance([ConceptGuidance(warmup=0), ConceptGuidance(warmup=0, reverse=True)])
    eps_u, eps_c = _eps(2, dtype=dtype)
    term = sega.step(0, eps_u, eps_c)
    assert term.dtype == dtype and term.shape == eps_u.shape
    ref = SegaGuidance(sega.concepts).step(0, eps_u.float(), eps_c.float())
    torch.testing.assert_close(term.float(), ref, atol=0.1, rtol=0.05)


def test_wrong_number_of_estimates_is_refused():
    sega = SegaGuidance([ConceptGuidance(warmup=0)])
    eps_u, eps_c = _eps(2)
    with pytest.raises(ValueError, match="step 0 needs 1 concept estimates, got 2"):
        sega.step(0, eps_u, eps_c)


def test_repeating_a_step_does_not_advance_momentum_twice():
    def run(repeat):
        sega = SegaGuidance([ConceptGuidance(warmup=1)], momentum_scale=0.5, momentum_beta=0.5)
        terms = []
        for i in range(4):
            eps_u, eps_c = _eps(1, seed=i)
            if repeat:  # a first call at another point, then the call that counts
                other_u, other_c = _eps(1, seed=100 + i)
                sega.step(i, other_u, other_c)
            terms.append(sega.step(i, eps_u, eps_c))
        return terms

    for a, b in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_empty_region_gives_no_term_and_no_error():
    from sega.guidance import ConceptGuidance, SegaGuidance

    g = SegaGuidance([ConceptGuidance(scale=5.0, threshold=0.9)], momentum_scale=0.0)
    uncond = torch.randn(2, 4, 8, 8)
    concepts = torch.randn(1, 2, 4, 8, 8)
    region = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    region[1, :, 2:4, 2:4] = True  # image 0 repaints nothing, image 1 a little
    term = g.step(0, uncond, concepts, region)
    assert torch.equal(term[0], torch.zeros_like(term[0]))
    assert term[1].abs().sum() > 0 and torch.equal(term[1][:, ~region[1, 0]], torch.zeros_like(term[1][:, ~region[1, 0]]))
