"""comfy/k_diffusion/sampling.py: ComfyUI's copy of k-diffusion's samplers. The stand-in runs
the real k-diffusion 0.1.1 functions (tests/webui.py loads them): the same calls per step, the
same order of model call, callback and further calls, which is what SEGA's step clock reads.
Not mirrored: ComfyUI's own additions (the rectified-flow variants, seeded noise samplers)."""

import sys

import webui

webui._load_k_diffusion()
sys.modules[__name__].__dict__.update(
    {k: v for k, v in vars(sys.modules["k_diffusion.sampling"]).items() if not k.startswith("__")})
