"""What a host's model call returns, and how SEGA's noise-space term maps onto it. Host-free.

SEGA is defined on noise estimates ε (sega-reference.md). Hosts hand out one of:

- `EPS`: noise estimates themselves (the WebUI's DDIM, PLMS, UniPC);
- `DENOISED`: x0 predictions of a model with x = x0 + σ·ε (k-diffusion samplers on SD 1.x,
  2.x and SDXL): ε = (x − x0)/σ, and a term γ in ε moves x0 by −σ·γ;
- `FLOW`: x0 predictions of a flow-matching model with x = (1 − σ)·x0 + σ·ε, σ in [0, 1]
  (SD3): ε = (x − (1 − σ)·x0)/σ. Adding γ to the guided ε gives
  x0' = (x − σ·(ε + γ))/(1 − σ) = x0 − σ/(1 − σ)·γ.

For a flow model the engine gets the concepts' estimates relative to the unconditional one,
ε_c − ε_u = −(1 − σ)/σ · (x0_c − x0_u), and zeros for ε_u. The engine reads its estimates
only through ε_c − ε_u, so this is the same step; computing ε_c and ε_u separately would
subtract two values close to x near σ = 1 and leave rounding noise that the factor
σ/(1 − σ) then blows up. At σ = 1 every estimate is x itself: the concepts differ by
nothing, and no ε term can be expressed in x0 (the factor is infinite), so the term is 0.
In both x0 forms a concept's term before thresholding is s·(x0_c − x0_u), so the scale means
the same in x0 units on every model; the momentum, kept in ε units, does not.
"""

from __future__ import annotations

import torch

EPS = "eps"
DENOISED = "denoised"
FLOW = "flow"


def _per_row(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def noise_estimates(space: str, x: torch.Tensor, sigma: torch.Tensor, uncond: torch.Tensor,
                    concepts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ε_u [B, …], ε_c [K, B, …] or None) for the engine, from the model's outputs for the
    B images `x` at `sigma` [B] (sigmas, or timesteps for `EPS`)."""
    if space == EPS:
        return uncond, concepts
    s = _per_row(sigma, uncond)
    if space == DENOISED:
        eps_u = (x - uncond) / s
        return eps_u, None if concepts is None else (x.unsqueeze(0) - concepts) / s
    if space == FLOW:
        if concepts is None:
            return torch.zeros_like(uncond), None
        ratio = (1 - s) / s
        return torch.zeros_like(uncond), -(ratio * (concepts - uncond.unsqueeze(0)))
    raise ValueError(f"unknown output space {space!r}")


def add_term(space: str, guided: torch.Tensor, term: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The host's guided result with the ε-space `term` [B, …] added, in the host's space."""
    if space == EPS:
        return guided + term
    s = _per_row(sigma, guided)
    if space == DENOISED:
        return guided - s * term
    if space == FLOW:
        return guided - flow_factor(s) * term
    raise ValueError(f"unknown output space {space!r}")


def flow_factor(sigma: torch.Tensor) -> torch.Tensor:
    """σ/(1 − σ), and 0 where σ ≥ 1 (there no ε term has an x0 form)."""
    rest = 1 - sigma
    open_ = rest > 0
    return torch.where(open_, sigma / torch.where(open_, rest, torch.ones_like(rest)), torch.zeros_like(sigma))
