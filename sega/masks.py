"""LEDITS++'s implicit masks (arXiv 2311.16711 §3.3), host-free: where each concept may act.

Per concept c with threshold λ_c, image b and step:

- M¹, the cross-attention mask: the concept's attention probabilities at the UNet's
  cross-attention layers on the latent/4 query grid (down and up blocks), averaged over
  heads and layers, summed over the concept's own token columns (`attention_maps` in
  sega_webui/attention.py hands that sum in), smoothed with a 3 × 3 Gaussian (σ = 0.5,
  reflect padding), 1 where it reaches its λ_c-quantile over the grid, else 0, and
  upsampled (nearest) to the latent, the same for every channel.
- M², the noise mask: 1 where the channel-summed |ψ_c| reaches its λ_c-quantile over the
  latent positions (one mask for every channel; SEGA's own threshold is per channel).

"attention" applies ψ_c·M¹, "intersect" ψ_c·M¹·M², except in the first steps (timestep
above 800 of 1000, `early`), where LEDITS++ uses M¹ alone. Both follow diffusers'
`LEditsPPPipelineStableDiffusion`, including its Gaussian kernel, which is
exp(−(d / 2σ)²) rather than exp(−d² / 2σ²) (tests/test_masks.py checks it against that code).

Inpainting (`region`): both quantiles are taken over the repainted positions only (an M¹
grid cell counts when any latent it covers is repainted), as SEGA's threshold is, and the
term is zero outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sega.fields import MASKS
from sega.quantile import abs_quantile

THRESHOLD, ATTENTION, INTERSECT = MASKS
SMOOTHING_SIGMA = 0.5
EARLY_TIMESTEP = 800  # of 1000: above it, "intersect" uses M¹ alone


def attention_grid(height: int, width: int) -> tuple[int, int]:
    """The query grid of the latent/4 layers: two stride-2 downsamplings (padding 1), as in
    the SD 1.x/2.x and SDXL UNets, so odd sizes round up."""
    return math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)


def smoothing_kernel(device=None, dtype=torch.float32) -> torch.Tensor:
    """The 3 × 3 Gaussian [1, 1, 3, 3] that LEDITS++ smooths M¹ with (sums to 1)."""
    d = torch.tensor([-1.0, 0.0, 1.0])
    line = torch.exp(-((d / (2 * SMOOTHING_SIGMA)) ** 2))
    kernel = line[:, None] * line[None, :]
    return (kernel / kernel.sum()).view(1, 1, 3, 3).to(device=device, dtype=dtype)


def smooth(maps: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """maps [N, h, w] smoothed with `smoothing_kernel` (pass it in, on maps' device and in
    their dtype, to spare a host-to-device copy per step), reflect-padded (a grid thinner
    than two cells cannot be reflected and is left as it is)."""
    if maps.shape[-1] < 2 or maps.shape[-2] < 2:
        return maps
    if kernel is None:
        kernel = smoothing_kernel(maps.device, maps.dtype)
    padded = F.pad(maps.unsqueeze(1), (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel).squeeze(1)


def attention_mask(
    maps: torch.Tensor,
    thresholds: torch.Tensor,
    size: tuple[int, int],
    region: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """M¹ [K, B, 1, H, W] (0/1 in maps' dtype) from the token-summed attention maps
    [K, B, h, w] and the per-concept thresholds [K]; `region` [B, H, W] bool or None."""
    k, b, h, w = maps.shape
    smoothed = smooth(maps.reshape(k * b, h, w), kernel).reshape(k, b, h * w)
    inside = None
    if region is not None:
        small = F.adaptive_max_pool2d(region.to(torch.float32).unsqueeze(1), (h, w)) > 0
        inside = small.reshape(1, b, h * w)
    q = abs_quantile(smoothed, thresholds.view(k, 1).expand(k, b), inside)
    keep = smoothed.to(torch.float32) >= q.unsqueeze(-1)
    mask = keep.to(maps.dtype).reshape(k * b, 1, h, w)
    return F.interpolate(mask, size=size, mode="nearest").reshape(k, b, 1, *size)


def noise_mask(psi: torch.Tensor, thresholds: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """M² [K, B, 1, H, W] bool from ψ [K, B, C, H, W]; `region` [B, H, W] bool or None."""
    k, b = psi.shape[:2]
    strength = psi.abs().sum(dim=2)
    flat = strength.reshape(k, b, -1)
    inside = None if region is None else region.reshape(1, b, -1)
    q = abs_quantile(flat, thresholds.view(k, 1).expand(k, b), inside)
    return (flat.to(torch.float32) >= q.unsqueeze(-1)).view(k, b, 1, *psi.shape[-2:])


def concept_masks(
    psi: torch.Tensor,
    thresholds: torch.Tensor,
    intersect: torch.Tensor,
    maps: torch.Tensor,
    region: torch.Tensor | None = None,
    early: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each concept's mask [K, B, 1, H, W] in psi's dtype.

    psi: the scaled, signed guidance [K, B, C, H, W]; thresholds [K]; intersect [K] bool
    (False: M¹ alone); maps: the token-summed attention [K, B, h, w]; region: where the
    image may change (bool, broadcastable to [B, C, H, W]) or None; early [B] bool: rows
    whose timestep is above 800, where M¹ stands alone; kernel: `smoothing_kernel` on
    psi's device, in its dtype.
    """
    where = None
    if region is not None:
        where = region.to(torch.bool).expand(psi.shape[1:]).any(dim=1)
    mask = attention_mask(maps.to(psi.dtype), thresholds, psi.shape[-2:], where, kernel)
    noise = noise_mask(psi, thresholds, where)
    if early is not None:
        noise = noise | early.view(1, -1, 1, 1, 1)
    noise = noise | ~intersect.view(-1, 1, 1, 1, 1)
    mask = mask * noise.to(psi.dtype)
    if where is not None:
        mask = mask * where.unsqueeze(1).to(psi.dtype)
    return mask
