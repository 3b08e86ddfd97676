"""Makes docs/masks-example.png: the same concepts with SEGA's threshold and with the
implicit mask "intersect" (LEDITS++), as guidance maps.

As in docs/maps_example.py, a drawn face stands in for the image and hand-made estimates for
the model: each concept's estimate differs from the unconditional one around its feature,
and also — strongly, but in scattered places — over the whole picture (what makes SEGA's
per-channel threshold nudge hair and background). The hand-made attention of each concept's
words lies on its feature. Both runs go through the real engine (20 steps, default settings,
maps tracked) and the real renderer; the picture shows the measure and the drawing, not a
model's output.

    python docs/masks_example.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "docs")]

from maps_example import CONCEPTS, LATENT, SIZE, STEPS, face  # noqa: E402

from sega.args import SegaArgs  # noqa: E402
from sega.maps import MapLabel, render_maps  # noqa: E402
from sega.masks import attention_grid  # noqa: E402


def run(mask: str):
    lines = "\n".join(c for c, _ in CONCEPTS)
    args = SegaArgs.from_named({"enabled": True, "concepts": lines, "show_maps": True, "mask": mask})
    guidance = args.guidance(STEPS)
    grid = attention_grid(LATENT, LATENT)
    g = torch.Generator().manual_seed(0)
    attention = torch.stack([F.adaptive_avg_pool2d(sum(blobs)[None, None], grid)[0] for _, blobs in CONCEPTS])
    for step in range(STEPS):
        eps_u = torch.randn(1, 4, LATENT, LATENT, generator=g)
        deltas = []
        for _, blobs in CONCEPTS:
            where = sum(blobs)
            scattered = (torch.rand(1, 1, LATENT, LATENT, generator=g) > 0.93).float()
            deltas.append(where * torch.randn(1, 4, LATENT, LATENT, generator=g) * 1.5
                          + scattered * torch.randn(1, 4, LATENT, LATENT, generator=g) * 2.5
                          + 0.3 * torch.randn(1, 4, LATENT, LATENT, generator=g))
        eps_c = eps_u.unsqueeze(0) + torch.stack(deltas)
        needed = list(guidance.rows_needed(step))
        maps = attention[needed] + 0.02 * torch.rand(len(needed), 1, *grid, generator=g)
        guidance.step(step, eps_u, eps_c[needed] if needed else None, attention=maps,
                      early=torch.tensor([step < 4]))
    masks = guidance.maps.mask_result()
    return guidance.maps.result()[:, 0].numpy(), None if masks is None else masks[:, 0].numpy(), args


def main() -> None:
    image = face()
    rows = []
    for mask in ("threshold", "intersect"):
        maps, masks, args = run(mask)
        labels = [MapLabel(c.text, c.reverse) for c in args.concepts]
        pictures = [p for p, _ in render_maps(image, maps, labels, mask, masks=masks)][: len(labels)]
        rows.append(pictures)
    gap = 8
    width = SIZE * len(rows[0]) + gap * (len(rows[0]) - 1)
    sheet = Image.new("RGB", (width, SIZE * 2 + gap), (255, 255, 255))
    for r, pictures in enumerate(rows):
        for k, picture in enumerate(pictures):
            sheet.paste(picture, (k * (SIZE + gap), r * (SIZE + gap)))
    sheet.save(ROOT / "docs" / "masks-example.png", optimize=True)


if __name__ == "__main__":
    main()
