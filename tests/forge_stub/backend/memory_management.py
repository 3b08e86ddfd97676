"""backend/memory_management.py: the few calls the sampling loop makes. The stand-in has
plenty of memory, so `calc_cond_uncond_batch` always batches whatever can be concatenated;
`loaded` records what `load_models_gpu` was asked to keep free, for the memory tests."""

signal_empty_cache = False
loaded: list[dict] = []


def get_free_memory(device=None):
    return 1 << 40


def soft_empty_cache(force=False):
    pass


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    loaded.append({"models": list(models), "memory_required": memory_required,
                   "hard_memory_preservation": hard_memory_preservation})
