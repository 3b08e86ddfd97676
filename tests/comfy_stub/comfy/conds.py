"""comfy/conds.py — as reForge's ldm_patched/modules/conds.py (see _reforge.py)."""

from comfy._reforge import reuse

reuse("modules/conds.py", globals())
