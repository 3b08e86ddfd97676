"""ldm_patched/modules/utils.py: `repeat_to_batch_size` (cut to, or repeat up to, a row count)."""

import math


def repeat_to_batch_size(tensor, batch_size, dim=0):
    rows = tensor.shape[dim]
    if rows > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if rows < batch_size:
        reps = [1] * tensor.dim()
        reps[dim] = math.ceil(batch_size / rows)
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor
