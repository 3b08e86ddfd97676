"""modules_forge/unet_patcher.py: `UnetPatcher(ModelPatcher)`, at `p.sd_model.forge_objects.unet`.
Its own `clone()` (no super call): patches and object patches copied, `model_options`
DEEP-copied (copy.deepcopy), `controlnet_linked_list`, `extra_preserved_memory_during_sampling`,
`extra_model_patchers_during_sampling` (a copy) and `extra_concat_condition` carried over;
NOT the patcher-level `wrappers`/`callbacks` (model_patcher.py docstring)."""

import copy

from ldm_patched.modules.model_patcher import ModelPatcher


class UnetPatcher(ModelPatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        n.parent = self
        return n

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes: int):
        self.extra_preserved_memory_during_sampling += memory_in_bytes

    def add_extra_model_patcher_during_sampling(self, model_patcher):
        self.extra_model_patchers_during_sampling.append(model_patcher)

    def list_controlnets(self):
        out, pointer = [], self.controlnet_linked_list
        while pointer is not None:
            out.append(pointer)
            pointer = pointer.previous_controlnet
        return out

    def append_model_option(self, k, v, ensure_uniqueness=False):
        lst = self.model_options.setdefault(k, [])
        if not (ensure_uniqueness and v in lst):
            lst.append(v)

    def append_transformer_option(self, k, v, ensure_uniqueness=False):
        lst = self.model_options.setdefault("transformer_options", {}).setdefault(k, [])
        if not (ensure_uniqueness and v in lst):
            lst.append(v)

    def set_transformer_option(self, k, v):
        self.model_options.setdefault("transformer_options", {})[k] = v

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)

    def add_sampler_pre_cfg_function(self, modifier, ensure_uniqueness=False):
        self.append_model_option("sampler_pre_cfg_function", modifier, ensure_uniqueness)

    def set_memory_peak_estimation_modifier(self, modifier):
        self.model_options["memory_peak_estimation_modifier"] = modifier
