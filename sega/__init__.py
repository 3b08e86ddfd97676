"""SEGA (Semantic Guidance) for Stable Diffusion samplers — the host-free library."""

from sega.guidance import ConceptGuidance, SegaGuidance

__all__ = ["ConceptGuidance", "SegaGuidance"]
