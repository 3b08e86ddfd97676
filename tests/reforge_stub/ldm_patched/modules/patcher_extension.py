"""ldm_patched/modules/patcher_extension.py: composable wrappers.

A wrapper of a kind (`WrappersMP.*`) lives in `transformer_options["wrappers"][kind][key]`
(a list); with `is_model_options=True` the dict given is a patcher's `model_options` and its
`transformer_options` is used. A `WrapperExecutor` calls the first wrapper as
`wrapper(executor, *args, **kwargs)`; the wrapper calls `executor(*args, **kwargs)` to run
the next one, the last of them the wrapped function itself."""

from __future__ import annotations


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_PRE_RUN = "on_pre_run"
    ON_PREPARE_STATE = "on_prepare_state"


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

    @classmethod
    def init_wrappers(cls):
        return {}


def _options(transformer_options, is_model_options, create):
    if not is_model_options:
        return transformer_options
    if create:
        return transformer_options.setdefault("transformer_options", {})
    return transformer_options.get("transformer_options", {})


def add_wrapper(wrapper_type, wrapper, transformer_options, is_model_options=False):
    add_wrapper_with_key(wrapper_type, None, wrapper, transformer_options, is_model_options)


def add_wrapper_with_key(wrapper_type, key, wrapper, transformer_options, is_model_options=False):
    to = _options(transformer_options, is_model_options, create=True)
    to.setdefault("wrappers", {}).setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)


def get_wrappers_with_key(wrapper_type, key, transformer_options, is_model_options=False):
    to = _options(transformer_options, is_model_options, create=False)
    return list(to.get("wrappers", {}).get(wrapper_type, {}).get(key, []))


def get_all_wrappers(wrapper_type, transformer_options, is_model_options=False):
    to = _options(transformer_options, is_model_options, create=False)
    return [w for ws in to.get("wrappers", {}).get(wrapper_type, {}).values() for w in ws]


class WrapperExecutor:
    def __init__(self, original, class_obj, wrappers, idx):
        self.original = original
        self.class_obj = class_obj  # the instance, for wrappers around a method
        self.wrappers = list(wrappers)
        self.idx = idx
        self.is_last = idx == len(wrappers)

    def __call__(self, *args, **kwargs):
        """What a wrapper calls: the next wrapper, or the wrapped function."""
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    @classmethod
    def new_executor(cls, original, wrappers, idx=0):
        return cls(original, None, wrappers, idx)

    @classmethod
    def new_class_executor(cls, original, class_obj, wrappers, idx=0):
        return cls(original, class_obj, wrappers, idx)


def copy_nested_dicts(input_dict):
    """Dicts copied all the way down, lists copied one level (their items shared)."""
    out = dict(input_dict)
    for k, v in input_dict.items():
        if isinstance(v, dict):
            out[k] = copy_nested_dicts(v)
        elif isinstance(v, list):
            out[k] = list(v)
    return out


def merge_nested_dicts(dict1, dict2, copy_dict1=True):
    """dict2 merged into dict1 (a copy of it unless copy_dict1=False): lists concatenated,
    other values from dict2; a nested dict is a copy of dict2's with dict1's merged into it
    (so there dict2's list items come first), as reForge recurses."""
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for k, v in dict2.items():
        if isinstance(v, dict):
            merged[k] = merge_nested_dicts(v, merged.setdefault(k, {}))
        elif isinstance(v, list):
            merged.setdefault(k, []).extend(v)
        else:
            merged[k] = v
    return merged
