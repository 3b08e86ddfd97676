"""comfy/model_patcher.py — as reForge's ldm_patched/modules/model_patcher.py (see _reforge.py)."""

from comfy._reforge import reuse

reuse("modules/model_patcher.py", globals())


def create_model_options_clone(orig_model_options: dict):
    """ComfyUI's per-run copy of the options: nested dicts and lists copied, callables shared."""
    return patcher_extension.copy_nested_dicts(orig_model_options)  # noqa: F821 - defined by reuse()


def _get_model_object(self, name):
    """ComfyUI reads objects such as `model_sampling` through the patcher (object patches first)."""
    return self.object_patches.get(name, getattr(self.model, name))


ModelPatcher.get_model_object = _get_model_object  # noqa: F821 - defined by reuse()
