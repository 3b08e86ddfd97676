"""comfy/ldm/modules/diffusionmodules/openaimodel.py — as reForge's ldm_patched/ldm/modules/diffusionmodules/openaimodel.py (see comfy/_reforge.py)."""

from comfy._reforge import reuse

reuse("ldm/modules/diffusionmodules/openaimodel.py", globals())
