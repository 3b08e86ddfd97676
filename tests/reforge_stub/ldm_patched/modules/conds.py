"""ldm_patched/modules/conds.py: the conditions a cond dict's `model_conds` hold. Each is
fitted to the rows of the batch it joins (`process_cond`); two join one model call when
`can_concat`; cross-attention conds of different token counts join by repeating each to
the least common multiple (at most 4× the shorter), which leaves attention unchanged."""

import math

import torch

from ldm_patched.modules.utils import repeat_to_batch_size


class CONDRegular:
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, device, **kwargs):
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [o.cond for o in others])

    def size(self):
        return list(self.cond.size())


class CONDCrossAttn(CONDRegular):
    def can_concat(self, other):
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 == s2:
            return True
        if s1[0] != s2[0] or s1[2] != s2[2]:
            return False
        return math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) <= 4

    def concat(self, others):
        conds = [self.cond] + [o.cond for o in others]
        length = math.lcm(*(c.shape[1] for c in conds))
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])
