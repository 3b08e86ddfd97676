"""SEGA guidance maps in the WebUI: which pass and batch each engine's maps belong to,
and, after the generation, the pictures appended to the gallery (and the API's images).

The engine sums the maps on the device while it samples (sega/maps.py). This module only
collects each pass's sums when the pass is over and turns them into pictures once, in the
script's `postprocess`, where the WebUI's other extensions add their extra images too:
after every generated image, so X/Y/Z (which takes each cell's first image), "Send to",
the real images' infotexts and `index_of_first_image` see what they saw without maps.

The WebUI (`modules.*`) is imported only inside the functions that save and pick fonts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sega.args import SegaArgs
from sega.maps import MapLabel, render_maps

STATE_ATTR = "sega_maps"
SAVE_OPTION = "sega_save_maps"
PNG_KEY = "SEGA map"  # text chunk naming what a map shows (API clients can read it)


@dataclass
class MapsState:
    labels: tuple[MapLabel, ...]
    batch_size: int
    passes: list = field(default_factory=list)  # (batch index, hires, [N, B, h, w] on the device)
    current: tuple | None = None  # (SegaPass, batch index, hires) of the pass sampling now
    batches_begun: int = 0


def begin_generation(p, args: SegaArgs | None) -> None:
    """Called with the script's args in `process`; resets what a copied `p` carried."""
    wanted = args is not None and args.active and args.show_maps
    labels = tuple(MapLabel(c.text, c.reverse) for c in args.concepts) if wanted else ()
    setattr(p, STATE_ATTR, MapsState(labels, int(p.batch_size)) if wanted else None)


def after_begin_pass(p, run) -> None:
    """Called after `host.begin_pass` with the generation's run: keep the finished pass's
    maps, note the new one's."""
    state = getattr(p, STATE_ATTR, None)
    if state is None:
        return
    _collect(state)
    hires = bool(getattr(p, "is_hr_pass", False))
    if not hires:
        state.batches_begun += 1
    # The WebUI numbers its batches in p.iteration; counting first passes is the fallback
    # (the gallery's Upscale button runs a hires pass with no first pass).
    batch = getattr(p, "iteration", None)
    if not isinstance(batch, int):
        batch = max(state.batches_begun - 1, 0)
    pass_ = getattr(run, "current", None)
    if pass_ is not None:
        state.current = (pass_, batch, hires)


def _collect(state: MapsState) -> None:
    if state.current is None:
        return
    pass_, batch, hires = state.current
    state.current = None
    guidance = getattr(pass_, "guidance", None)
    maps = getattr(guidance, "maps", None)
    if maps is None:
        return  # the pass never started sampling, or its settings did not fit its steps
    state.passes.append((batch, hires, maps.result(), maps.mask_result()))


def postprocess(p, processed, font_factory=None, save=None) -> int:
    """Append the maps after the generated images; returns how many were added.

    `save(picture, caption, image_index)`, when given, is called for each map (the WebUI's
    `images.save_image` behind the Settings option, see `saver`)."""
    state = getattr(p, STATE_ATTR, None)
    setattr(p, STATE_ATTR, None)
    if state is None:
        return 0
    _collect(state)
    if not state.passes or not isinstance(getattr(processed, "images", None), list):
        return 0
    pictures = pictures_for(state, processed, font_factory)
    if not pictures:
        return 0
    infotexts = getattr(processed, "infotexts", None)
    if isinstance(infotexts, list):
        # Other extensions append images without infotexts; pad so that each of ours sits
        # at its image's position (the gallery looks infotexts up by that position).
        fallback = getattr(processed, "info", "") or (infotexts[0] if infotexts else "")
        infotexts.extend([fallback] * (len(processed.images) - len(infotexts)))
    for picture, caption, index in pictures:
        picture.info[PNG_KEY] = caption
        processed.images.append(picture)
        if isinstance(infotexts, list):
            infotexts.append(_infotext_of(processed, index))
        if save is not None:
            save(picture, caption, index)
    return len(pictures)


def pictures_for(state: MapsState, processed, font_factory=None) -> list[tuple]:
    """(picture, caption, generated image index) for every image, in image order, each
    image's first-pass maps before its hires-pass maps."""
    first = int(getattr(processed, "index_of_first_image", 0) or 0)
    several_passes = len({entry[1] for entry in state.passes}) > 1
    # One device-to-host copy per pass, after sampling.
    per_pass = [(batch, hires, *(None if m is None else m.float().cpu().numpy() for m in (maps, *masks)))
                for batch, hires, maps, *masks in state.passes]
    out = []
    images = processed.images
    for batch in sorted({m[0] for m in per_pass}):
        for i in range(state.batch_size):
            index = batch * state.batch_size + i
            position = first + index
            if position >= len(images) or not hasattr(images[position], "size"):
                continue  # the image is missing (interrupted) or not a picture
            image = images[position]
            for _, hires, maps, *masks in sorted((m for m in per_pass if m[0] == batch), key=lambda m: m[1]):
                own = None if maps is None or i >= maps.shape[1] else maps[:, i]
                mask = masks[0] if masks else None
                own_mask = None if mask is None or i >= mask.shape[1] else mask[:, i]
                name = "hires pass" if hires else ("first pass" if several_passes else "")
                for picture, caption in render_maps(image, own, state.labels, name, font_factory, own_mask):
                    out.append((picture, caption, index))
    return out


def _infotext_of(processed, index: int) -> str:
    infotexts = processed.infotexts
    first = int(getattr(processed, "index_of_first_image", 0) or 0)
    position = first + index
    if position < len(infotexts) and isinstance(infotexts[position], str):
        return infotexts[position]
    return getattr(processed, "info", "") or ""


# ---- the WebUI's side: fonts, saving, the Settings option ---------------------------------


def webui_font_factory():
    """The WebUI's own font (Settings → font), which draws any script, or None."""
    try:
        from modules import images
    except ImportError:
        return None
    return getattr(images, "get_font", None)


def saver(p):
    """Saves each map next to the samples when Settings → SEGA says so and the WebUI saves
    this generation's images; None otherwise."""
    try:
        from modules import images, shared
    except ImportError:
        return None
    opts = shared.opts
    if not getattr(opts, SAVE_OPTION, False):
        return None
    saves = p.save_samples() if hasattr(p, "save_samples") else not getattr(p, "do_not_save_samples", False)
    if not saves:
        return None
    counts: dict[int, int] = {}

    def save(picture, caption, index):
        counts[index] = counts.get(index, 0) + 1
        seeds, prompts = getattr(p, "all_seeds", None) or [None], getattr(p, "all_prompts", None) or [""]
        images.save_image(
            picture, p.outpath_samples, "", seeds[min(index, len(seeds) - 1)], prompts[min(index, len(prompts) - 1)],
            opts.samples_format, info=caption, p=p, pnginfo_section_name=PNG_KEY,
            suffix=f"-sega-map-{counts[index]}-{_slug(caption)}",
        )

    return save


def _slug(caption: str) -> str:
    text = caption.split(":", 1)[-1]
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40].lower()


def save_option(section):
    """Settings → SEGA: whether maps are saved with the images (registered with the rest of
    SEGA's settings, in every start mode: sega_webui/registration.py)."""
    import gradio as gr
    from modules import shared

    return shared.OptionInfo(
        False, "Save the SEGA guidance maps (\"Show where concepts act\") with the images, when images are saved",
        gr.Checkbox, section=section)
