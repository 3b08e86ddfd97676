"""modules/prompt_parser.py: A1111's (the A1111 stand-in's), with reForge's additions to
`DictWithShape`: `to(...)` and `advanced_indexing(rows)` (which
forge_sampler.cond_from_a1111_to_patched_ldm_weighted uses to pick an AND-part's rows)."""

from pathlib import Path

import torch

_A1111 = Path(__file__).resolve().parents[2] / "webui_stub" / "modules" / "prompt_parser.py"
exec(compile(_A1111.read_text(), str(_A1111), "exec"), globals())  # noqa: S102 - the A1111 stand-in's parser


def _to(self, *args, **kwargs):
    for k in self.keys():
        if isinstance(self[k], torch.Tensor):
            self[k] = self[k].to(*args, **kwargs)
    return self


def _advanced_indexing(self, item):
    return DictWithShape({k: v[item] for k, v in self.items() if isinstance(v, torch.Tensor)})  # noqa: F821


DictWithShape.to = _to  # noqa: F821
DictWithShape.advanced_indexing = _advanced_indexing  # noqa: F821
