"""Makes docs/maps-example.png: SEGA guidance maps for a synthetic example.

A drawn face stands in for the generated image, and hand-made noise estimates stand in for
the model: each concept's estimate differs from the unconditional one mostly around one
feature (the mouth, the eyes, the hair), plus weak noise everywhere. These go through the
real guidance engine (20 steps, the extension's default settings, maps tracked) and the
real map renderer. The pictures show the renderer and the measure, not a model's output.

    python docs/maps_example.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sega.args import SegaArgs  # noqa: E402
from sega.maps import MapLabel, render_maps  # noqa: E402

SIZE, LATENT, STEPS = 256, 32, 20


def face() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (70, 110, 150))
    d = ImageDraw.Draw(image)
    d.ellipse((58, 30, 198, 150), fill=(70, 45, 30))  # hair
    d.rectangle((40, 215, 216, 256), fill=(60, 60, 90))  # shoulders
    d.rectangle((110, 180, 146, 222), fill=(225, 180, 150))  # neck
    d.ellipse((68, 50, 188, 200), fill=(235, 190, 160))  # face
    for x in (98, 158):
        d.ellipse((x - 12, 104, x + 12, 118), fill=(255, 255, 255))
        d.ellipse((x - 5, 106, x + 5, 116), fill=(60, 40, 30))
    d.polygon(((128, 118), (120, 145), (136, 145)), fill=(215, 165, 135))  # nose
    d.arc((104, 150, 152, 176), 20, 160, fill=(150, 60, 60), width=4)  # mouth
    return image


def blob(cx: float, cy: float, rx: float, ry: float) -> torch.Tensor:
    """A soft ellipse on the latent grid, centre and radii in image pixels."""
    ys, xs = torch.meshgrid(torch.arange(LATENT) + 0.5, torch.arange(LATENT) + 0.5, indexing="ij")
    scale = SIZE / LATENT
    return torch.exp(-(((xs * scale - cx) / rx) ** 2 + ((ys * scale - cy) / ry) ** 2))


CONCEPTS = [  # (concept line, where its estimate differs)
    ("smiling, smile", [blob(128, 163, 34, 18)]),
    ("-glasses", [blob(98, 111, 26, 16), blob(158, 111, 26, 16)]),
    ("curly hair", [blob(128, 58, 70, 30), blob(70, 110, 16, 40), blob(186, 110, 16, 40)]),
]


def main() -> None:
    args = SegaArgs.from_named({"enabled": True, "concepts": "\n".join(c for c, _ in CONCEPTS), "show_maps": True})
    guidance = args.guidance(STEPS)
    g = torch.Generator().manual_seed(0)
    for step in range(STEPS):
        eps_u = torch.randn(1, 4, LATENT, LATENT, generator=g)
        deltas = []
        for _, blobs in CONCEPTS:
            where = sum(blobs)
            deltas.append(where * torch.randn(1, 4, LATENT, LATENT, generator=g) * 1.5
                          + 0.3 * torch.randn(1, 4, LATENT, LATENT, generator=g))
        eps_c = eps_u.unsqueeze(0) + torch.stack(deltas)
        needed = list(guidance.rows_needed(step))
        guidance.step(step, eps_u, eps_c[needed] if needed else None)
    maps = guidance.maps.result()[:, 0].numpy()
    image = face()
    labels = [MapLabel(c.text, c.reverse) for c in args.concepts]
    pictures = [image] + [p for p, _ in render_maps(image, maps, labels)]
    strip = Image.new("RGB", (SIZE * len(pictures) + 8 * (len(pictures) - 1), SIZE), (255, 255, 255))
    for k, picture in enumerate(pictures):
        strip.paste(picture, (k * (SIZE + 8), 0))
    strip.save(ROOT / "docs" / "maps-example.png", optimize=True)


if __name__ == "__main__":
    main()
