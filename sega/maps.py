"""Where each concept acts: SEGA guidance maps. Host-free (torch, numpy, PIL).

The measure. For concept c, image b and latent position (h, w), the map is

    M_c[b, h, w] = Σ_steps  a_c(step) · Σ_channels |ψ_c[b, ch, h, w]|

where ψ_c is the concept's scaled, signed and thresholded guidance of that step (the part
SEGA keeps: the strongest 1 − λ of each channel) and a_c is the weight with which the step
applies it: g_c when every concept is warm, g_c normalised among the warm concepts when
only some are, 0 while the concept is not applied (before its warm-up, after its cooldown,
weight 0). The momentum, a running mix of the same terms, is not attributed to concepts.
Steps count alike (ε units, not scaled by the step size); a step that the sampler
evaluates more than once (second-order samplers) counts once, as the mean of its calls.

`ConceptMaps` sums this on the estimates' device with no device-to-host copy; the pictures
are made once after sampling (`render_maps`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


class ConceptMaps:
    """Sums each concept's applied term per position over a pass's steps, on the device."""

    def __init__(self):
        self._masks = _MaskShare()
        self._total: torch.Tensor | None = None
        self._pending: torch.Tensor | None = None  # the current step's calls, summed
        self._pending_step: int | None = None
        self._pending_calls = 0

    def add(self, step: int, psi: torch.Tensor, applied: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """psi: the thresholded terms [N, B, C, H, W] (zeros for concepts not evaluated);
        applied: each concept's weight in this step's term [N], float32, on psi's device;
        mask: where each concept's implicit mask let it act this step [N, B, H, W], or None."""
        if mask is not None:
            self._masks.add(step, mask, applied)
        contribution = psi.detach().abs().sum(dim=2, dtype=torch.float32)
        contribution.mul_(applied.view(-1, 1, 1, 1))
        if step == self._pending_step:
            self._pending.add_(contribution)
            self._pending_calls += 1
            return
        self._flush()
        self._pending, self._pending_step, self._pending_calls = contribution, step, 1

    def _flush(self) -> None:
        if self._pending is None:
            return
        # Out of place: the last flush runs after sampling, and a host that samples under
        # torch.inference_mode (Forge) forbids in-place updates of its tensors outside it.
        step = self._pending / self._pending_calls
        self._total = step if self._total is None else self._total + step
        self._pending, self._pending_step, self._pending_calls = None, None, 0

    def result(self) -> torch.Tensor | None:
        """[N, B, H, W] float32 on the device, or None when no concept was ever applied."""
        self._flush()
        return self._total

    def mask_result(self) -> torch.Tensor | None:
        """[N, B, H, W] float32: the share of its applied steps in which each concept's mask
        was open at each position (1 everywhere for a concept without a mask), or None
        when no step had masks."""
        return self._masks.result()


class _MaskShare:
    """Counts, per concept, in how many of its applied steps each position was in its mask
    (a step evaluated twice counts once, as its calls' mean)."""

    def __init__(self):
        self._sum = self._steps = self._pending = self._acting = None
        self._step, self._calls = None, 0

    def add(self, step: int, mask: torch.Tensor, applied: torch.Tensor) -> None:
        acting = (applied > 0).to(torch.float32)
        share = mask.to(torch.float32) * acting.view(-1, 1, 1, 1)
        if step == self._step:
            self._pending.add_(share)
            self._calls += 1
            return
        self._flush()
        self._pending, self._acting, self._step, self._calls = share, acting, step, 1

    def _flush(self) -> None:
        if self._pending is None:
            return
        share = self._pending / self._calls  # out of place, as ConceptMaps._flush
        self._sum = share if self._sum is None else self._sum + share
        self._steps = self._acting if self._steps is None else self._steps + self._acting
        self._pending, self._step = None, None

    def result(self) -> torch.Tensor | None:
        self._flush()
        if self._sum is None:
            return None
        return self._sum / self._steps.clamp(min=1.0).view(-1, 1, 1, 1)


# ---- pictures ------------------------------------------------------------------------------

# Colour ramps as (position, RGB) anchors: a warm ramp for concepts steered towards and a
# cold one for concepts steered away from, so the direction reads at a glance.
TOWARDS_RAMP = ((0.0, (40, 10, 60)), (0.35, (150, 30, 110)), (0.65, (240, 100, 30)), (1.0, (255, 245, 150)))
AWAY_RAMP = ((0.0, (10, 20, 70)), (0.35, (30, 80, 190)), (0.7, (60, 190, 240)), (1.0, (220, 250, 255)))
# One colour per concept in the combined map.
PALETTE = (
    (255, 140, 0), (0, 200, 255), (255, 60, 200), (120, 230, 40),
    (255, 230, 0), (150, 110, 255), (255, 70, 70), (230, 230, 230),
)
DIM = 0.35  # brightness of the image under the map


@dataclass(frozen=True)
class MapLabel:
    text: str
    reverse: bool = False

    def caption(self) -> str:
        return f"- {self.text} (away from)" if self.reverse else f"+ {self.text} (towards)"


def ramp(values: np.ndarray, anchors) -> np.ndarray:
    """RGB float [..., 3] in 0..255 for values in 0..1."""
    xs = [a[0] for a in anchors]
    return np.stack([np.interp(values, xs, [a[1][ch] for a in anchors]) for ch in range(3)], axis=-1)


def upscale(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A latent-sized map [h, w] resized (bilinear) to the image's (width, height)."""
    if heat.shape[::-1] == tuple(size):
        return heat.astype(np.float32)
    resample = getattr(Image, "Resampling", Image).BILINEAR
    return np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(size, resample), dtype=np.float32)


def normalise(heat: np.ndarray) -> np.ndarray:
    peak = float(heat.max()) if heat.size else 0.0
    return np.clip(heat / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(heat)


def dimmed(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) * DIM


def overlay(base: np.ndarray, colour: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """`colour` laid over `base` with opacity `strength` (0..1) per pixel."""
    alpha = strength[..., None]
    return base * (1.0 - alpha) + colour * alpha


def concept_picture(image: Image.Image, heat: np.ndarray, label: MapLabel, note: str = "",
                    font_factory: Callable[[int], object] | None = None, mask: np.ndarray | None = None) -> Image.Image:
    """One concept's map over a dimmed copy of `image`, with its caption; with `mask` (the
    share of steps its implicit mask was open, latent-sized), the outline of where it was
    ever open: outside it the mask kept the concept out, inside the heat says how much
    it pulled."""
    v = normalise(upscale(heat, image.size))
    colour = ramp(v, AWAY_RAMP if label.reverse else TOWARDS_RAMP)
    out = overlay(dimmed(image), colour, v)
    if mask is not None:
        edge = outline(mask > 0, image.size)
        out[edge] = OUTLINE
    picture = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    lines = [label.caption() + (f"  |  {note}" if note else "")]
    return _caption(picture, [(None, line) for line in lines], font_factory)


OUTLINE = (255, 255, 255)


def outline(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The boundary band [height, width] of a latent-sized bool `region` blown up (nearest)
    to the picture's (width, height): inside pixels within a few pixels of the outside.
    Nothing when the region is everywhere or nowhere."""
    width, height = size
    rows = (np.arange(height) * region.shape[0] // height).clip(0, region.shape[0] - 1)
    cols = (np.arange(width) * region.shape[1] // width).clip(0, region.shape[1] - 1)
    big = region[rows][:, cols]
    inner = big
    for _ in range(max(1, min(width, height) // 128)):  # 2 px on a 256² picture, thicker on bigger ones
        padded = np.pad(inner, 1, mode="edge")
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return big & ~inner


def combined_picture(image: Image.Image, heats: np.ndarray, labels: Sequence[MapLabel], notes: Sequence[str] = (),
                     title: str = "", font_factory: Callable[[int], object] | None = None) -> Image.Image:
    """All concepts on one picture: at each pixel the colour of the concept whose map
    (each scaled to its own peak) is strongest there, as bright as that map."""
    vs = np.stack([normalise(upscale(h, image.size)) for h in heats])
    strongest = vs.argmax(axis=0)
    strength = vs.max(axis=0)
    colours = np.asarray([PALETTE[i % len(PALETTE)] for i in range(len(labels))], dtype=np.float32)
    out = overlay(dimmed(image), colours[strongest], strength)
    picture = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    legend = [(None, title)] if title else []
    for i, label in enumerate(labels):
        note = notes[i] if i < len(notes) and notes[i] else ""
        legend.append((PALETTE[i % len(PALETTE)], label.caption() + (f"  {note}" if note else "")))
    return _caption(picture, legend, font_factory)


def default_font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # older Pillow (the WebUI pins 9.5): the fixed bitmap font
        return ImageFont.load_default()


def _caption(picture: Image.Image, lines, font_factory) -> Image.Image:
    """Write `lines` ((swatch colour or None, text)) in a dark band along the bottom."""
    width, height = picture.size
    size = max(10, round(min(width, height) / 32))
    font = (font_factory or default_font)(size)
    draw = ImageDraw.Draw(picture, "RGBA")
    line_height = _text_height(draw, font) + max(2, size // 3)
    pad = max(2, size // 3)
    band = line_height * len(lines) + pad
    draw.rectangle((0, height - band, width, height), fill=(0, 0, 0, 190))
    y = height - band + pad // 2
    for swatch, text in lines:
        x = pad
        if swatch is not None:
            box = line_height - pad
            draw.rectangle((x, y + 1, x + box, y + box), fill=tuple(swatch) + (255,))
            x += box + pad
        draw.text((x, y), _fit(draw, text, font, width - x - pad), font=font, fill=(255, 255, 255, 255))
        y += line_height
    return picture


def _text_height(draw, font) -> int:
    box = draw.textbbox((0, 0), "Ag|", font=font)
    return box[3] - box[1]


def _fit(draw, text: str, font, room: int) -> str:
    """`text` cut to fit `room` pixels (with …), in characters the font can draw."""
    text = _drawable(text, font)
    if draw.textlength(text, font=font) <= room:
        return text
    ellipsis = _drawable("…", font) if _drawable("…", font) == "…" else "..."
    while text and draw.textlength(text + ellipsis, font=font) > room:
        text = text[:-1]
    return text + ellipsis


def _drawable(text: str, font) -> str:
    # The bitmap fallback font only knows Latin-1; a TrueType font draws anything.
    if isinstance(font, ImageFont.ImageFont):
        return text.encode("latin-1", "replace").decode("latin-1")
    return text


def shares(maps: np.ndarray) -> list[float | None]:
    """Each concept's part of the summed maps of one image [N, H, W], or None each when
    nothing acted."""
    sums = maps.reshape(maps.shape[0], -1).sum(axis=1).astype(np.float64)
    total = float(sums.sum())
    return [float(s) / total if total > 0 else None for s in sums]


def render_maps(image: Image.Image, maps: np.ndarray | None, labels: Sequence[MapLabel], pass_name: str = "",
                font_factory: Callable[[int], object] | None = None,
                masks: np.ndarray | None = None) -> list[tuple[Image.Image, str]]:
    """The pictures for one image and one pass: one per concept, then (with several
    concepts) the combined one. `maps`: [N, h, w] for this image, or None when no concept
    acted; `masks`: [N, h, w] the share of steps each concept's mask was open, or None.
    Returns (picture, caption) pairs."""
    n = len(labels)
    if maps is None:
        maps = np.zeros((n, 8, 8), dtype=np.float32)
    parts = shares(maps)
    suffix = f" | {pass_name}" if pass_name else ""
    notes = ["did not act" if s is None or s == 0 else f"{100 * s:.0f} % of SEGA" for s in parts]
    out = []
    for i, (heat, label, note) in enumerate(zip(maps, labels, notes, strict=True)):
        mask = None if masks is None or bool((masks[i] > 0).all()) else masks[i]
        if mask is not None:
            note += ", outline: mask"
        picture = concept_picture(image, heat, label, note + suffix, font_factory, mask)
        out.append((picture, f"SEGA map: {label.caption()}, {note}{suffix}"))
    if n > 1:
        title = f"all concepts | {pass_name}" if pass_name else ""
        picture = combined_picture(image, maps, labels, notes, title, font_factory)
        out.append((picture, f"SEGA map: all concepts{suffix}"))
    return out
