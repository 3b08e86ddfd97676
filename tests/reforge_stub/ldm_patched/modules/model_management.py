"""ldm_patched/modules/model_management.py: the calls the sampling loop makes. The stand-in
has `FREE_MEMORY` bytes free (plenty unless a test lowers it, to see `calc_cond_batch` split
its batch); `loaded` records what `load_models_gpu` was asked for."""

FREE_MEMORY = 1 << 40
loaded: list[dict] = []


def get_free_memory(dev=None, torch_free_too=False):
    return FREE_MEMORY


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    loaded.append({"models": list(models), "memory_required": memory_required})


def soft_empty_cache(force=False):
    pass
