"""Which WebUI the extension runs in, decided once, here, by what the host can do
(forge-contract.md §7) rather than by its name or version: forks differ and move.

- Forge (stable-diffusion-webui-forge 2.x): samples through `backend.sampling.sampling_function`,
  whose CFG denoiser never fires `on_cfg_denoised` and ignores added cond rows; SEGA joins
  through a UNet patcher's pre/post-CFG functions (forge.py).
- reForge: `modules_forge` without Forge 2's backend; samples through
  `ldm_patched.modules.samplers`, whose batched call takes extra cond lists: SEGA joins it
  through a composable CALC_COND_BATCH wrapper and a post-CFG function (reforge.py).
- AUTOMATIC1111 (1.10.x): the CFG callbacks (host.py).
"""

from __future__ import annotations

import importlib.util

A1111 = "a1111"
FORGE = "forge"
REFORGE = "reforge"


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is not there, or a half-loaded one
        return False


def detect() -> str:
    if not _importable("modules_forge"):
        return A1111
    if _importable("backend.sampling.sampling_function"):
        return FORGE
    return REFORGE


# Imported once per host process (the extension's modules are not reloaded between
# generations), so this is read once per start.
CURRENT = detect()
