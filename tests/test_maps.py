"""Guidance maps in the library: the measure the engine sums, and the pictures."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sega.guidance import ConceptGuidance, SegaGuidance
from sega.maps import DIM, ConceptMaps, MapLabel, concept_picture, render_maps

H = W = 16


def quadrant_delta(quadrant=(0, 0), b=1, c=4, seed=0):
    """Random values in one quadrant (row, column) of each channel, zero elsewhere."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.zeros(b, c, H, W)
    r, q = quadrant
    delta[:, :, r * H // 2:(r + 1) * H // 2, q * W // 2:(q + 1) * W // 2] = torch.randn(b, c, H // 2, W // 2, generator=g)
    return delta


def estimates(deltas, b=1, seed=0):
    """ε_u and, per concept, ε_u + its delta."""
    g = torch.Generator().manual_seed(100 + seed)
    eps_u = torch.randn(b, 4, H, W, generator=g)
    return eps_u, torch.stack([eps_u + d for d in deltas])


def run_engine(sega, steps, deltas_for_step, b=1):
    terms = []
    for i in steps:
        eps_u, eps_c = estimates(deltas_for_step(i), b, seed=i)
        needed = list(sega.rows_needed(i))
        terms.append(sega.step(i, eps_u, eps_c[needed] if needed else None))
    return terms


def quadrants(m):
    return {(r, q): m[..., r * H // 2:(r + 1) * H // 2, q * W // 2:(q + 1) * W // 2] for r in (0, 1) for q in (0, 1)}


# ---- the measure ------------------------------------------------------------------------------


def test_a_term_in_one_quadrant_gives_a_map_there_only():
    sega = SegaGuidance([ConceptGuidance(warmup=0)], track_maps=True)
    run_engine(sega, range(6), lambda i: [quadrant_delta(seed=i)])
    m = sega.maps.result()
    assert m.shape == (1, 1, H, W) and m.dtype == torch.float32
    parts = quadrants(m[0, 0])
    assert parts[0, 0].sum() > 0
    assert all(torch.equal(parts[k], torch.zeros_like(parts[k])) for k in [(0, 1), (1, 0), (1, 1)])


def test_the_map_is_the_applied_term_summed_over_channels_and_steps():
    # One concept and no momentum: the whole term is the concept's, so the map must be
    # exactly Σ_steps Σ_channels |term|.
    sega = SegaGuidance([ConceptGuidance(warmup=2, weight=2.0, threshold=0.9)], momentum_scale=0.0, track_maps=True)
    terms = run_engine(sega, range(7), lambda i: [torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(i))])
    expected = sum(t.abs().sum(dim=1) for t in terms)
    torch.testing.assert_close(sega.maps.result()[0], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(terms[0], torch.zeros_like(terms[0]))  # before the warm-up: nothing applied


def test_partial_warmup_counts_the_warm_concepts_normalised_weights():
    sega = SegaGuidance([ConceptGuidance(warmup=0, weight=3.0, threshold=0.0), ConceptGuidance(warmup=2)],
                        momentum_scale=0.0, track_maps=True)
    terms = run_engine(sega, range(2), lambda i: [quadrant_delta(seed=i), quadrant_delta((1, 1), seed=9 + i)])
    m = sega.maps.result()
    torch.testing.assert_close(m[0], sum(t.abs().sum(dim=1) for t in terms), rtol=1e-5, atol=1e-5)
    assert torch.equal(m[1], torch.zeros_like(m[1]))  # not warm yet: fed the momentum only


def test_weight_zero_and_cooled_down_concepts_add_nothing():
    concepts = [ConceptGuidance(warmup=0, cooldown=4), ConceptGuidance(warmup=0), ConceptGuidance(warmup=0, weight=0.0)]
    sega = SegaGuidance(concepts, momentum_scale=0.3, track_maps=True)

    def deltas(i):
        return [quadrant_delta(seed=i), quadrant_delta((1, 1), seed=50 + i), quadrant_delta((0, 1), seed=90 + i)]

    run_engine(sega, range(4), deltas)
    before = sega.maps.result().clone()
    run_engine(sega, range(4, 10), deltas)
    after = sega.maps.result()
    assert before[0].sum() > 0 and torch.equal(after[0], before[0])  # nothing after its cooldown
    assert after[1].sum() > before[1].sum()  # the other concept keeps acting
    assert torch.equal(after[2], torch.zeros_like(after[2]))  # weight 0: never


def test_nothing_applied_yet_gives_no_maps():
    sega = SegaGuidance([ConceptGuidance(warmup=5)], momentum_scale=0.3, track_maps=True)
    run_engine(sega, range(5), lambda i: [quadrant_delta(seed=i)])
    assert sega.maps.result() is None


def test_a_step_evaluated_twice_counts_once_as_the_mean_of_its_calls():
    maps = ConceptMaps()
    psi = [torch.rand(1, 1, 4, H, W) for _ in range(3)]
    one = torch.ones(1)
    maps.add(0, psi[0], one)
    maps.add(0, psi[1], one)  # the second call of a second-order step
    maps.add(1, psi[2], one)
    expected = (psi[0].sum(2) + psi[1].sum(2)) / 2 + psi[2].sum(2)
    torch.testing.assert_close(maps.result(), expected)


def test_batch_of_two_keeps_each_image_its_own_map():
    sega = SegaGuidance([ConceptGuidance(warmup=0)], track_maps=True)

    def deltas(i):
        d = quadrant_delta(b=2, seed=i)
        d[1] = quadrant_delta((1, 1), seed=40 + i)[0]
        return [d]

    run_engine(sega, range(4), deltas, b=2)
    m = sega.maps.result()[0]
    first, second = quadrants(m[0]), quadrants(m[1])
    assert first[0, 0].sum() > 0 and first[1, 1].sum() == 0
    assert second[1, 1].sum() > 0 and second[0, 0].sum() == 0


def test_tracking_maps_leaves_the_terms_bit_identical():
    concepts = [ConceptGuidance(warmup=1, cooldown=5), ConceptGuidance(warmup=3, reverse=True, weight=0.5)]
    runs = []
    for track in (False, True):
        sega = SegaGuidance(concepts, momentum_scale=0.3, momentum_beta=0.6, track_maps=track)
        runs.append(run_engine(sega, [0, 1, 1, 2, 3, 4, 5, 6], lambda i: [quadrant_delta(seed=i),
                                                                           quadrant_delta((1, 0), seed=7 + i)]))
        assert (sega.maps is None) != track
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


# ---- the pictures -----------------------------------------------------------------------------


def gray(size=128, value=200):
    return Image.new("RGB", (size, size), (value, value, value))


def quadrant_heat():
    heat = np.zeros((H, W), dtype=np.float32)
    heat[: H // 2, : W // 2] = np.linspace(0.5, 1.0, (H // 2) * (W // 2)).reshape(H // 2, W // 2)
    return heat


def test_picture_is_bright_where_the_map_is_and_the_dimmed_image_elsewhere():
    picture = np.asarray(concept_picture(gray(), quadrant_heat(), MapLabel("smile")), dtype=np.int32)
    top_left, top_right = picture[8:56, 8:56], picture[8:56, 72:120]
    assert top_left.sum(axis=2).mean() > 1.5 * top_right.sum(axis=2).mean()
    row, col = np.unravel_index(picture[:100].sum(axis=2).argmax(), (100, 128))
    assert row < 64 and col < 64
    assert (top_right == round(200 * DIM)).all()  # untouched: the dimmed image
    assert picture.shape == (128, 128, 3)  # the image's size
    assert (picture[-3:, :, :] < 60).mean() > 0.5  # the caption band


def test_reverse_concepts_are_shown_as_such():
    towards = np.asarray(concept_picture(gray(), quadrant_heat(), MapLabel("glasses")), dtype=np.int32)[8:56, 8:56]
    away = np.asarray(concept_picture(gray(), quadrant_heat(), MapLabel("glasses", reverse=True)), dtype=np.int32)[8:56, 8:56]
    assert towards[..., 0].mean() > towards[..., 2].mean()  # warm colours
    assert away[..., 2].mean() > away[..., 0].mean()  # cold colours
    captions = [c for _, c in render_maps(gray(), np.stack([quadrant_heat()] * 2),
                                          [MapLabel("smile"), MapLabel("glasses", reverse=True)])]
    assert captions == ["SEGA map: + smile (towards), 50 % of SEGA", "SEGA map: - glasses (away from), 50 % of SEGA",
                        "SEGA map: all concepts"]


def test_a_concept_that_never_acted_shows_the_plain_dimmed_image():
    maps = np.stack([quadrant_heat(), np.zeros((H, W), np.float32)])
    (_, first), (picture, caption), (combined, _) = render_maps(gray(), maps, [MapLabel("a"), MapLabel("b")])
    assert caption == "SEGA map: + b (towards), did not act" and first.endswith("100 % of SEGA")
    assert (np.asarray(picture)[:100] == round(200 * DIM)).all()
    assert np.asarray(combined)[8:56, 8:56].sum() > np.asarray(picture)[8:56, 8:56].sum()


def test_combined_map_gives_each_concept_its_colour():
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1
    right = left[:, ::-1].copy()
    (_, _), (_, _), (combined, _) = render_maps(gray(), np.stack([left, right]), [MapLabel("a"), MapLabel("b")])
    c = np.asarray(combined, dtype=np.int32)
    assert c[30, 20].argmax() == 0  # the first palette colour (orange) on the left
    assert c[30, 100].argmax() == 2  # the second (cyan-blue) on the right


def test_captions_survive_any_text_and_tiny_images():
    labels = [MapLabel("笑顔, (smile:1.2) " * 10), MapLabel("ö", reverse=True)]
    out = render_maps(gray(size=16), np.ones((2, 2, 2), np.float32), labels)
    assert [p.size for p, _ in out] == [(16, 16)] * 3
