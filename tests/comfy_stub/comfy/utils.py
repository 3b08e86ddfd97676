"""comfy/utils.py — as reForge's ldm_patched/modules/utils.py (see _reforge.py)."""

from comfy._reforge import reuse

reuse("modules/utils.py", globals())
