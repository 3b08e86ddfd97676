"""ldm_patched/modules/model_patcher.py: `ModelPatcher`, the base of reForge's UnetPatcher.

`clone()` DEEP-copies `model_options` (copy.deepcopy: patch lists, flags, and the patch
callables' own state where they are deep-copyable — bound methods copy their instance),
so patching a clone never reaches the original; the model is shared. The setters as
reForge has them:

- `set_model_sampler_cfg_function(fn, disable_cfg1_optimization=False)`: one slot; a
  3-parameter fn is the old form, called as fn(cond, uncond, cond_scale);
- `set_model_sampler_post_cfg_function(fn, disable_cfg1_optimization=False)` and
  `set_model_sampler_pre_cfg_function(fn, disable_cfg1_optimization=False)`: appended
  to `sampler_post_cfg_function` / `sampler_pre_cfg_function`;
- `set_model_sampler_calc_cond_batch_function(fn)`, `set_model_unet_function_wrapper(fn)`
  (`model_function_wrapper`, one slot);
- `set_model_patch(patch, name)` → `transformer_options["patches"][name]` (attn1_patch,
  attn2_patch, …), `set_model_patch_replace` → `patches_replace[name][(block, number[, index])]`.

`add_wrapper_with_key` on the PATCHER stores the wrapper in `self.wrappers`, which only
reForge's ComfyUI-style `CFGGuider` (sampler_helpers.prepare_model_patcher) copies into
`model_options`, and which UnetPatcher.clone does not copy: on the A1111 sampling path a
wrapper must go into `model_options` with `patcher_extension.add_wrapper_with_key(kind,
key, fn, unet.model_options, is_model_options=True)`."""

import copy
import inspect

from ldm_patched.modules import patcher_extension


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    to = model_options["transformer_options"].copy()
    replace = to.get("patches_replace", {}).copy()
    replace[name] = replace.get(name, {}).copy()
    block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    replace[name][block] = patch
    to["patches_replace"] = replace
    model_options["transformer_options"] = to
    return model_options


def set_model_options_post_cfg_function(model_options, post_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def set_model_options_pre_cfg_function(model_options, pre_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_pre_cfg_function"] = model_options.get("sampler_pre_cfg_function", []) + [pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device, self.offload_device, self.size = load_device, offload_device, size
        self.model_options = {"transformer_options": {}}
        self.patches = {}
        self.object_patches = {}
        self.wrappers = patcher_extension.WrappersMP.init_wrappers()
        self.parent = None

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.wrappers = {k: {k1: list(w) for k1, w in v.items()} for k, v in self.wrappers.items()}
        n.parent = self
        return n

    def memory_required(self, input_shape):
        return self.model.memory_required(input_shape=input_shape)

    def model_dtype(self):
        return self.model.get_dtype()

    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        if len(inspect.signature(sampler_cfg_function).parameters) == 3:
            self.model_options["sampler_cfg_function"] = lambda args: sampler_cfg_function(
                args["cond"], args["uncond"], args["cond_scale"])
        else:
            self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_post_cfg_function(self.model_options, post_cfg_function,
                                                                 disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_pre_cfg_function(self.model_options, pre_cfg_function,
                                                                disable_cfg1_optimization)

    def set_model_sampler_calc_cond_batch_function(self, sampler_calc_cond_batch_function):
        self.model_options["sampler_calc_cond_batch_function"] = sampler_calc_cond_batch_function

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {})
        to["patches"][name] = to["patches"].get(name, []) + [patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                              transformer_index)

    def set_model_attn1_patch(self, patch):
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def add_wrapper(self, wrapper_type, wrapper):
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def get_wrappers(self, wrapper_type, key):
        return self.wrappers.get(wrapper_type, {}).get(key, [])
