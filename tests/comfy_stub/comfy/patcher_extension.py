"""comfy/patcher_extension.py — as reForge's ldm_patched/modules/patcher_extension.py (see _reforge.py), plus
ComfyUI's PREDICT_NOISE wrappers."""

from comfy._reforge import reuse

reuse("modules/patcher_extension.py", globals())

# ComfyUI 0.8.0's guiders also wrap their noise prediction.
WrappersMP.PREDICT_NOISE = "predict_noise"  # noqa: F821 - defined by reuse()
