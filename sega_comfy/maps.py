"""The SEGA guidance maps node: where each concept acted, drawn over the decoded images.

A MODEL patch returns before anything samples, so the maps come from a node downstream of
the sampler: it takes the SEGA model, the sampler's LATENT and the decoded IMAGE, and finds
the run that made those samples among the patch's last runs. ComfyUI's cache keeps it
consistent: the node re-runs exactly when something upstream of it did, and a cached sampler
left its run with the patch."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sega.maps import MapLabel, render_maps

from .patch import SegaPatch


def patch_of(model) -> SegaPatch | None:
    for fn in model.model_options.get("sampler_post_cfg_function", []):
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, SegaPatch):
            return owner
    return None


class SegaMapsNode:
    DESCRIPTION = ("Where each SEGA concept acted, over the decoded images: one picture per image and concept "
                   "(and all concepts together), warm colours towards, cool ones away.")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("maps",)
    FUNCTION = "draw"
    CATEGORY = "sampling/SEGA"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model from the SEGA node that the sampler used."}),
            "samples": ("LATENT", {"tooltip": "The sampler's output."}),
            "images": ("IMAGE", {"tooltip": "The samples, decoded: the maps are drawn over them."}),
        }}

    def draw(self, model, samples, images):
        patch = patch_of(model)
        if patch is None:
            raise ValueError("SEGA guidance maps: this model has no SEGA node before it")
        try:
            maps, masks = patch.maps_for(samples["samples"])
        except KeyError:
            raise ValueError("SEGA guidance maps: no sampling run of this SEGA model made these samples (connect "
                             "the LATENT of the sampler that used this model)") from None
        labels = [MapLabel(c.text, c.reverse) for c in patch.args.concepts]
        pictures = []
        for i, image in enumerate(images):
            base = Image.fromarray(np.clip(image.cpu().numpy() * 255 + 0.5, 0, 255).astype(np.uint8))
            own = None if maps is None or i >= maps.shape[1] else maps[:, i].numpy()
            mask = None if masks is None or i >= masks.shape[1] else masks[:, i].numpy()
            pictures += [picture for picture, _ in render_maps(base, own, labels, masks=mask)]
        return (_batch(pictures),)


def _batch(pictures) -> torch.Tensor:
    """[M, H, W, 3] in 0..1, the pictures padded to the largest (an IMAGE batch is one size)."""
    height = max(p.size[1] for p in pictures)
    width = max(p.size[0] for p in pictures)
    out = torch.zeros((len(pictures), height, width, 3))
    for i, p in enumerate(pictures):
        out[i, : p.size[1], : p.size[0]] = torch.from_numpy(np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0)
    return out
