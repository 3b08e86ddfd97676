"""Quantiles of magnitudes, as SEGA's thresholds and the masks take them. Plain torch."""

from __future__ import annotations

import torch


def abs_quantile(values: torch.Tensor, q: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Linear-interpolation quantile of |values| over the last dim, one q per leading row.

    Bit-identical to `torch.quantile(values.abs(), q_i, dim=-1)` taken row by row, but
    vectorised over rows that each have their own q, and without the host-side checks
    torch.quantile runs on a tensor q (a device sync). With `region` (bool, broadcastable
    to `values`), only the entries inside it count, as if the others were not there.
    """
    magnitude = values.abs().to(torch.float32)
    if region is None:
        ordered = magnitude.sort(dim=-1).values
        ranks = q.to(torch.float32) * (ordered.shape[-1] - 1)
        skipped = 0
    else:
        # Entries outside the region sort first (below any magnitude) and are skipped.
        region = region.expand_as(magnitude)
        ordered = torch.where(region, magnitude, torch.full((), -1.0, device=magnitude.device)).sort(dim=-1).values
        inside = region.sum(dim=-1)
        ranks = q.to(torch.float32) * (inside - 1).clamp(min=0)
        skipped = ordered.shape[-1] - inside
    below = ranks.long()
    weight = ranks - below
    above = ranks.ceil().long()
    last = ordered.shape[-1] - 1  # an empty region (nothing repainted) must not index past the end
    low = ordered.gather(-1, (below + skipped).clamp(max=last).unsqueeze(-1)).squeeze(-1)
    high = ordered.gather(-1, (above + skipped).clamp(max=last).unsqueeze(-1)).squeeze(-1)
    return low.lerp(high, weight)
