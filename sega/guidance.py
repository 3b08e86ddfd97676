"""The SEGA guidance step, host-free.

`SegaGuidance` holds one sampling pass's concept settings and momentum and turns the
concept noise estimates of one step into the term to add to the guided noise estimate.
It follows diffusers' `SemanticStableDiffusionPipeline` step by step (see
../shared/docs/sega-reference.md in the project and README "Deviations").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sega.maps import ConceptMaps
from sega.masks import concept_masks, smoothing_kernel
from sega.quantile import abs_quantile


@dataclass(frozen=True)
class ConceptGuidance:
    """One concept's settings with warm-up and cooldown already resolved to steps."""

    scale: float = 5.0
    threshold: float = 0.95
    warmup: int = 0
    cooldown: int | None = None  # None: the concept never cools down
    weight: float = 1.0
    reverse: bool = False
    mask: str = "threshold"  # see sega/masks.py

    def is_warm(self, step: int) -> bool:
        return step >= self.warmup

    def is_cooled(self, step: int) -> bool:
        return self.cooldown is not None and step >= self.cooldown




def threshold_guidance(psi: torch.Tensor, thresholds: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the entries of psi [K, B, C, H, W] whose magnitude reaches the per-concept
    percentile `thresholds` [K], taken over H×W for every (concept, image, channel).
    With `region` (bool, broadcastable to [B, C, H, W]) the percentile is taken over the
    region only, and entries outside it are dropped."""
    k, b, c = psi.shape[:3]
    flat = psi.reshape(k, b, c, -1)
    inside = None if region is None else region.to(torch.bool).expand(psi.shape[1:]).reshape(1, b, c, -1)
    q = abs_quantile(flat, thresholds.view(k, 1, 1).expand(k, b, c), inside).to(psi.dtype)
    keep = flat.abs() >= q.unsqueeze(-1)
    if inside is not None:
        keep = keep & inside
    return torch.where(keep, flat, torch.zeros((), dtype=psi.dtype, device=psi.device)).view_as(psi)


class SegaGuidance:
    """Per-pass SEGA state: the concepts' settings and the momentum ν.

    Call `rows_needed(step)` to learn which concepts' estimates the step uses, evaluate
    exactly those, then `step(step, eps_uncond, eps_concepts)` for the term to add to the
    guided noise estimate ε_u + s_g(ε_p − ε_u). Steps are 0-based and fed in order. A step
    may be fed more than once (second-order samplers evaluate the model twice per step):
    every call of a step sees the momentum as it was before that step, and the momentum
    after the step is the one its last call computed.
    """

    def __init__(
        self,
        concepts: Sequence[ConceptGuidance],
        momentum_scale: float = 0.3,
        momentum_beta: float = 0.6,
        track_maps: bool = False,
    ):
        """`track_maps`: also sum where each concept's applied term acts (`maps`, see
        sega/maps.py). Off, the step computes exactly what it computes without it."""
        if not concepts:
            raise ValueError("SegaGuidance needs at least one concept")
        self.concepts = tuple(concepts)
        self.momentum_scale = float(momentum_scale)
        self.momentum_beta = float(momentum_beta)
        self.momentum: torch.Tensor | None = None
        self._momentum_before: torch.Tensor | None = None
        self._last_step: int | None = None
        # Parameter, index and weight tensors per device and phase, built once, so a step
        # never copies host data to the device.
        self._cache: dict[tuple, object] = {}
        self.maps: ConceptMaps | None = ConceptMaps() if track_maps else None
        self._step_mask: torch.Tensor | None = None  # this step's masks, for the maps

    def __len__(self) -> int:
        return len(self.concepts)

    def rows_needed(self, step: int) -> tuple[int, ...]:
        """Indices of the concepts whose noise estimate can change this step's result.

        A cooled-down or zero-weight concept contributes exactly 0; an unwarmed concept
        only feeds the momentum, which is unused when the momentum scale is 0.
        """
        return tuple(
            i
            for i, c in enumerate(self.concepts)
            if not c.is_cooled(step)
            and c.weight > 0
            and (c.is_warm(step) or self.momentum_scale != 0.0)
        )

    def needs_attention(self, step: int) -> bool:
        """Whether this step's concepts need their attention maps (a mask other than
        "threshold" among `rows_needed(step)`)."""
        return any(self.concepts[i].mask != "threshold" for i in self.rows_needed(step))

    def is_idle(self, step: int) -> bool:
        """True when this step's term is exactly zero and calling `step` would change
        nothing: no concept needs rows and the momentum is either unused or still zero."""
        return not self.rows_needed(step) and (self.momentum_scale == 0.0 or self.momentum is None)

    def restart_momentum(self) -> None:
        """Back to no momentum, as at the start of a pass (the steps and settings stay)."""
        self.momentum = self._momentum_before = self._last_step = None

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        key = ("params", device, dtype)
        if key not in self._cache:
            cs = self.concepts
            self._cache[key] = {
                "signed_scale": torch.tensor(
                    [-c.scale if c.reverse else c.scale for c in cs], dtype=dtype, device=device
                ),
                "threshold": torch.tensor([c.threshold for c in cs], dtype=torch.float32, device=device),
                "masked": torch.tensor([c.mask != "threshold" for c in cs], device=device),
                "intersect": torch.tensor([c.mask == "intersect" for c in cs], device=device),
            }
            if any(c.mask != "threshold" for c in cs):

                self._cache[key]["kernel"] = smoothing_kernel(device, dtype)
        return self._cache[key]

    def _index(self, device: torch.device, active: tuple[int, ...]) -> torch.Tensor:
        key = ("index", device, active)
        if key not in self._cache:
            self._cache[key] = torch.tensor(active, dtype=torch.long, device=device)
        return self._cache[key]

    def step(
        self,
        step: int,
        eps_uncond: torch.Tensor,
        eps_concepts: torch.Tensor | None,
        region: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
        early: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The SEGA term for one step.

        eps_uncond: [B, C, H, W]; eps_concepts: [K, B, C, H, W] for the K concepts of
        `rows_needed(step)`, in that order (None or K = 0 when none are needed).
        region: where the image may change (bool, broadcastable to [B, C, H, W]; None:
        everywhere). Thresholds count only the region and the term is zero outside it.
        attention: the token-summed attention maps [K, B, h, w] of the same K concepts,
        needed when `needs_attention(step)`; early: [B] bool, rows whose timestep is above
        800 (see sega/masks.py).
        """
        active = self.rows_needed(step)
        k = 0 if eps_concepts is None else eps_concepts.shape[0]
        if k != len(active):
            raise ValueError(f"step {step} needs {len(active)} concept estimates, got {k}")
        device, dtype = eps_uncond.device, eps_uncond.dtype
        if self.momentum is None:
            self.momentum = torch.zeros_like(eps_uncond)
        if step != self._last_step:
            self._momentum_before, self._last_step = self.momentum, step
        momentum = self._momentum_before

        warm = tuple(c.is_warm(step) for c in self.concepts)
        weights = tuple(0.0 if c.is_cooled(step) else max(c.weight, 0.0) for c in self.concepts)
        n, b = len(self.concepts), eps_uncond.shape[0]

        # The sums below run over every concept, with zero rows for the skipped ones,
        # so that they add the same products in the same order as the reference does.
        if active:
            p = self._tensors(device, dtype)
            idx = self._index(device, active)
            shape = (len(active), 1, 1, 1, 1)
            psi = (eps_concepts - eps_uncond.unsqueeze(0)) * p["signed_scale"].index_select(0, idx).view(shape)
            psi = self._limit(psi, p, idx, active, region, attention, early)
            if len(active) < n:
                psi = eps_uncond.new_zeros((n, *eps_uncond.shape)).index_copy_(0, idx, psi)
            gamma = torch.einsum("cb,cbijk->bijk", self._weight_matrix(device, dtype, weights, b), psi)
        else:
            psi = None
            gamma = torch.zeros_like(eps_uncond)

        if self.momentum_scale != 0.0:
            gamma = gamma + self.momentum_scale * momentum
            self.momentum = self.momentum_beta * momentum + (1 - self.momentum_beta) * gamma

        if self.maps is not None and psi is not None:
            self._track_maps(step, psi, warm, weights, self._step_mask)
            self._step_mask = None

        if all(warm):
            return gamma
        if not any(warm) or psi is None:
            return torch.zeros_like(eps_uncond)
        # Some but not all concepts warm: the warm ones apply at once, their weights
        # normalised among the warm ones, without momentum.
        w_hat, sel = self._warm_weights(device, dtype, warm, weights, b)
        if w_hat is None:
            # The reference divides 0 by 0 here (NaN); no warm weight means no edit.
            return torch.zeros_like(eps_uncond)
        return torch.einsum("cb,cbijk->bijk", w_hat, psi.index_select(0, sel))

    def _limit(self, psi, p, idx, active, region, attention, early) -> torch.Tensor:
        """ψ limited to where each concept may act: its threshold, or its implicit mask."""
        thresholds = p["threshold"].index_select(0, idx)
        modes = {self.concepts[i].mask for i in active}
        if modes == {"threshold"}:
            return threshold_guidance(psi, thresholds, region)
        if attention is None or attention.shape[:2] != psi.shape[:2]:
            got = None if attention is None else tuple(attention.shape)
            raise ValueError(f"the masks need attention maps for {tuple(psi.shape[:2])} concept rows, got {got}")

        mask = concept_masks(psi, thresholds, p["intersect"].index_select(0, idx), attention, region, early, p["kernel"])
        if "threshold" not in modes:
            self._remember_mask(mask, idx)
            return psi * mask
        use_mask = p["masked"].index_select(0, idx).view(-1, 1, 1, 1, 1)
        self._remember_mask(torch.where(use_mask, mask, torch.ones((), dtype=mask.dtype, device=mask.device)), idx)
        return torch.where(use_mask, psi * mask, threshold_guidance(psi, thresholds, region))

    def _remember_mask(self, mask, idx) -> None:
        """The step's masks [N, B, H, W] for the maps (concepts not evaluated: zeros)."""
        if self.maps is None:
            return
        mask = mask.squeeze(2)
        if mask.shape[0] < len(self.concepts):
            mask = mask.new_zeros((len(self.concepts), *mask.shape[1:])).index_copy_(0, idx, mask)
        self._step_mask = mask

    def _track_maps(self, step, psi, warm, weights, mask=None) -> None:
        """Hand the maps each concept's share of the term this step applies: its weight
        when every concept is warm, its normalised weight when only some are (the
        momentum is not attributed), nothing while none is."""
        key = ("maps", psi.device, warm, weights)
        if key not in self._cache:
            applied = None
            if all(warm):
                applied = list(weights)
            elif any(warm):
                total = sum(w for w, is_warm in zip(weights, warm, strict=True) if is_warm)
                if total > 0:
                    applied = [w / total if is_warm else 0.0 for w, is_warm in zip(weights, warm, strict=True)]
            if applied is not None and any(applied):
                applied = torch.tensor(applied, dtype=torch.float32).to(psi.device)
            else:
                applied = None
            self._cache[key] = applied
        applied = self._cache[key]
        if applied is not None:
            self.maps.add(step, psi, applied, mask)

    def _weight_matrix(self, device, dtype, weights, batch):
        key = ("w", device, dtype, weights, batch)
        if key not in self._cache:
            self._cache[key] = torch.tensor(weights, dtype=dtype).view(-1, 1).repeat(1, batch).to(device)
        return self._cache[key]

    def _warm_weights(self, device, dtype, warm, weights, batch):
        """Weights of the warm concepts normalised among themselves, cached per phase."""
        key = ("warm", device, dtype, warm, weights, batch)
        if key not in self._cache:
            warm_idx = tuple(i for i, is_warm in enumerate(warm) if is_warm)
            w = torch.tensor([weights[i] for i in warm_idx], dtype=dtype).view(-1, 1).repeat(1, batch)
            total = w.sum(dim=0)
            if not bool((total > 0).all()):
                self._cache[key] = (None, None)
            else:
                # Divide in the estimates' dtype, as the reference does.
                self._cache[key] = ((w / total).to(device), self._index(device, warm_idx))
        return self._cache[key]
