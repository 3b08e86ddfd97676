"""Guidance maps in the WebUI: after the generated images in the gallery and the API's
images, with their infotexts, saved on request, bit-identical images, no sync while
sampling. Through the stand-in, and with PIL images built here."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import torch
from host_harness import Host, sega_values
from PIL import Image

from sega.maps import DIM, MapLabel
from sega_webui import maps as webui_maps


def solid(colour, size=64):
    return Image.new("RGB", (size, size), colour)


COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]


def fake_result(n_images, grid=True):
    images = [solid(c) for c in COLOURS[:n_images]]
    infotexts = [f"image {k}\nSteps: 6, Seed: {k}" for k in range(n_images)]
    if grid:
        images.insert(0, solid((9, 9, 9), 128))
        infotexts.insert(0, "grid\nSteps: 6")
    return types.SimpleNamespace(images=images, infotexts=infotexts, info=infotexts[0], index_of_first_image=int(grid))


LABELS = (MapLabel("a"), MapLabel("b", reverse=True))


def state_with(maps_per_batch, batch_size=2):
    p = types.SimpleNamespace()
    state = webui_maps.MapsState(LABELS, batch_size)
    for batch, maps in enumerate(maps_per_batch):
        state.passes.append((batch, False, maps))
    p.sega_maps = state
    return p


def test_maps_follow_the_generated_images_in_order_with_their_infotexts():
    result = fake_result(4)
    before_images, before_infotexts = list(result.images), list(result.infotexts)
    heat = torch.zeros(2, 2, 8, 8)
    heat[:, :, :4, :4] = 1  # top left only: the rest of each map shows its own image, dimmed
    p = state_with([heat, heat.clone()])
    added = webui_maps.postprocess(p, result)
    assert added == 4 * 3 and p.sega_maps is None
    assert result.images[:5] == before_images and result.infotexts[:5] == before_infotexts
    assert result.index_of_first_image == 1 and len(result.infotexts) == len(result.images)
    for k in range(4):
        pictures = result.images[5 + 3 * k: 8 + 3 * k]
        assert [pic.info["SEGA map"].split(",")[0] for pic in pictures] == [
            "SEGA map: + a (towards)", "SEGA map: - b (away from)", "SEGA map: all concepts"]
        expected = tuple(round(v * DIM) for v in COLOURS[k])
        assert all(pic.getpixel((60, 10)) == expected for pic in pictures)  # drawn over image k
        assert result.infotexts[5 + 3 * k: 8 + 3 * k] == [before_infotexts[1 + k]] * 3


def test_images_another_extension_added_keep_the_infotexts_aligned():
    result = fake_result(2, grid=False)
    result.images.append(solid((1, 2, 3)))  # e.g. a detected map, appended without an infotext
    webui_maps.postprocess(state_with([torch.ones(2, 2, 8, 8)]), result)
    assert len(result.images) == len(result.infotexts) == 3 + 2 * 3
    assert result.infotexts[3:6] == [result.infotexts[0]] * 3 and result.infotexts[6:] == [result.infotexts[1]] * 3


def test_a_hires_pass_alone_says_so():
    # The gallery's Upscale button runs only a hires pass.
    p = state_with([torch.ones(2, 1, 8, 8)], batch_size=1)
    p.sega_maps.passes[0] = (0, True, p.sega_maps.passes[0][2])
    result = fake_result(1, grid=False)
    webui_maps.postprocess(p, result)
    assert [pic.info["SEGA map"].rsplit("|", 1)[-1] for pic in result.images[1:]] == [" hires pass"] * 3


def test_missing_images_get_no_maps():
    result = fake_result(2, grid=False)
    added = webui_maps.postprocess(state_with([torch.ones(2, 2, 8, 8), torch.ones(2, 2, 8, 8)]), result)
    assert added == 2 * 3  # the second batch's images are not there (interrupted)


@pytest.fixture(scope="module")
def host():
    return Host()


def plain_and_with_maps(host, **kwargs):
    values = dict(warmup="1")
    off = host.generate(sega_values(**values), **kwargs)
    on = host.generate(sega_values(**values, show_maps=True), **kwargs)
    assert host.reported == []
    return off, on


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DDIM"])
def test_maps_on_or_off_gives_bit_identical_latents(host, sampler):
    off, on = plain_and_with_maps(host, sampler_name=sampler, batch_size=2, enable_hr=True, hr_second_pass_steps=3)
    assert torch.equal(on.images, off.images)
    assert on.extra_generation_params == off.extra_generation_params
    assert not torch.equal(on.images, host.generate(None, batch_size=2, sampler_name=sampler, enable_hr=True,
                                                    hr_second_pass_steps=3).images)


def test_gallery_and_api_images_gain_maps_only_when_asked(host):
    off, on = plain_and_with_maps(host, batch_size=2, n_iter=2, pil_images=True)
    n = len(off.images)
    assert n == 1 + 4 and off.index_of_first_image == on.index_of_first_image == 1
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(off.images, on.images[:n], strict=False))
    assert on.infotexts[:n] == off.infotexts and len(on.infotexts) == len(on.images)
    assert "show" not in "".join(on.infotexts).lower()  # not written to the infotext
    assert len(on.images) == n + 4 * 3  # per image: two concepts and the combined map
    sources = [on.infotexts[k] for k in range(n, len(on.images))]
    assert sources == [off.infotexts[1 + k] for k in range(4) for _ in range(3)]
    assert all("SEGA map" in picture.info and "parameters" not in picture.info for picture in on.images[n:])
    assert all(picture.size == off.images[1].size for picture in on.images[n:])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_xyz_cells_still_take_the_generated_image(host, batch_size):
    # X/Y/Z (1.10.1) puts each cell's images[0] and infotexts[0] into its grid.
    off, on = plain_and_with_maps(host, batch_size=batch_size, pil_images=True)
    assert np.array_equal(np.asarray(on.images[0]), np.asarray(off.images[0]))
    assert on.infotexts[0] == off.infotexts[0] and len(on.images) > len(off.images)


def test_hires_pass_gets_its_own_maps(host):
    _, on = plain_and_with_maps(host, enable_hr=True, hr_second_pass_steps=3, denoising_strength=0.5, pil_images=True)
    captions = [picture.info["SEGA map"] for picture in on.images[1:]]
    assert len(captions) == 6
    assert all(c.endswith("| first pass") for c in captions[:3]) and all(c.endswith("| hires pass") for c in captions[3:])
    assert {picture.size for picture in on.images} == {(128, 128)}


def test_hires_pass_without_sega_shows_the_first_pass_unnamed(host):
    on = host.generate(sega_values(warmup="1", hires=False, show_maps=True), enable_hr=True, hr_second_pass_steps=3,
                       pil_images=True)
    assert host.reported == []
    assert len(on.images) == 4 and not any("pass" in picture.info["SEGA map"] for picture in on.images[1:])


def test_interrupted_generation_gets_maps_for_the_images_it_made(host):
    def interrupt(params):
        if params.denoiser.step == 3:
            host.w.shared.state.interrupted = True

    with host.callback("cfg_denoiser", interrupt):
        on = host.generate(sega_values(warmup="1", show_maps=True), batch_size=2, n_iter=2, pil_images=True)
    assert host.reported == []
    assert len(on.images) == 1 + 2 + 2 * 3


def test_maps_are_saved_only_when_the_setting_says_so(host):
    from modules import images

    opts = host.w.shared.opts
    values = sega_values(warmup="1", show_maps=True)
    try:
        images.saved.clear()
        host.generate(values, batch_size=2, pil_images=True)
        assert images.saved == []
        opts.sega_save_maps = True
        host.generate(values, batch_size=2, pil_images=True)
        assert len(images.saved) == 2 * 3
        _, path, _, seed, prompt, ext, kw = images.saved[3]
        assert (seed, ext, kw["pnginfo_section_name"]) == (1, "png", "SEGA map")
        assert kw["suffix"].startswith("-sega-map-1-") and kw["info"].startswith("SEGA map: + smile")
        images.saved.clear()
        host.generate(values, batch_size=2, pil_images=True, do_not_save_samples=True)  # an API request's save_images
        assert images.saved == []
    finally:
        opts.reset()
        images.saved.clear()
    assert host.reported == []


def test_settings_option_is_registered(host):
    from sega_webui import registration

    opts = host.w.shared.opts
    registration.add_settings()
    info = opts.data_labels["sega_save_maps"]
    assert info.default is False and info.section == ("sega", "SEGA")


# ---- no device-to-host copy in the sampling loop --------------------------------------------

SYNCING = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__")


@contextlib.contextmanager
def count_syncs(host):
    """Counts tensor→host conversions: all of them, and those inside SEGA's callbacks."""
    counts = {"all": 0, "sega": 0}
    inside = [False]
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def counting(fn):
        def inner(self, *a, **kw):
            counts["all"] += 1
            counts["sega"] += inside[0]
            return fn(self, *a, **kw)

        return inner

    def guarded(fn):
        def inner(params):
            inside[0] = True
            try:
                return fn(params)
            finally:
                inside[0] = False

        return inner

    callbacks = host.w.script_callbacks.callbacks
    saved = {k: list(v) for k, v in callbacks.items()}
    for name in ("cfg_denoiser", "cfg_denoised", "cfg_after_cfg"):
        callbacks[name][:] = [guarded(fn) for fn in callbacks[name]]
    for name, fn in originals.items():
        setattr(torch.Tensor, name, counting(fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        for k, v in saved.items():
            callbacks[k][:] = v


@pytest.mark.parametrize("sampler", ["Euler", "Heun"])
def test_maps_add_no_device_to_host_copy_while_sampling(host, sampler):
    # The second concept cools down halfway: a new phase in the middle of the pass.
    concepts = "smile\n-glasses :: cooldown=4"
    with count_syncs(host) as on:
        host.generate(sega_values(concepts, warmup="1", show_maps=True), sampler_name=sampler, batch_size=2)
    with count_syncs(host) as off:
        host.generate(sega_values(concepts, warmup="1"), sampler_name=sampler, batch_size=2)
    assert host.reported == []
    assert on["sega"] == 0 and off["sega"] == 0
    assert on["all"] == off["all"]  # and nowhere else in the loop (the latents path makes no pictures)
    with host.callback("cfg_denoised", lambda params: params.x.sum().item()):
        with count_syncs(host) as probe:  # the counter does see a conversion inside a callback
            host.generate(sega_values(concepts, warmup="1"), sampler_name=sampler)
    assert probe["sega"] > 0
