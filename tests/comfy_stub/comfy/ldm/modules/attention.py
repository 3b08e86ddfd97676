"""comfy/ldm/modules/attention.py — as reForge's ldm_patched/ldm/modules/attention.py (see comfy/_reforge.py)."""

from comfy._reforge import reuse

reuse("ldm/modules/attention.py", globals())
