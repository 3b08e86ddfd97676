"""Inpainting: SEGA acts only where the WebUI repaints. Plain torch.

The WebUI's CFG denoiser blends the original latents back in where the mask keeps them,
`x·nmask + init_latent·mask` (its `mask` keeps, `nmask` repaints): k-diffusion samplers blend
the guided result, before the after-CFG callbacks run; DDIM, PLMS and UniPC
(`mask_before_denoising`) blend the model's input instead. A term added after CFG would
therefore, in the first order, land on the latents the mask keeps, and in both orders move
what the sampler carries there. So the term is weighted by `nmask`: that is the weight the
host's own blend gives the guided result, which makes "blend, then add" exactly "add, then
blend", and it is exactly zero wherever the mask keeps everything. The engine also takes its
percentile thresholds over the repainted region only (`region`), so that "the strongest 5 %"
means 5 % of what is being repainted, not of the whole picture.
"""

from __future__ import annotations

import torch


def repaint_share(denoiser) -> torch.Tensor | None:
    """The share of each latent the host repaints (`nmask`, broadcastable to [B, C, H, W]),
    or None when it blends nothing in (txt2img, img2img without a mask)."""
    nmask = getattr(denoiser, "nmask", None)
    if nmask is None or getattr(denoiser, "mask", None) is None or getattr(denoiser, "init_latent", None) is None:
        return None
    return nmask


def region(share: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Where the term may be non-zero, as a bool tensor on `like`'s device."""
    return None if share is None else share.to(like.device) > 0


def restrict(term: torch.Tensor, share: torch.Tensor | None) -> torch.Tensor:
    """The term weighted by the repaint share; exactly 0 where nothing is repainted."""
    if share is None:
        return term
    share = share.to(device=term.device, dtype=term.dtype)
    return torch.where(share > 0, term * share, torch.zeros((), dtype=term.dtype, device=term.device))
