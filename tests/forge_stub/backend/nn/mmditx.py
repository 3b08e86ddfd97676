"""backend/nn/mmditx.py (Forge dfdcbab6): SD3's MMDiT(-X) in Forge keeps the layout of the
WebUI's modules/models/sd3/mmdit.py — both come from Stability's SD3 reference: the same
module names (`joint_blocks.N.{context_block,x_block}.attn.{qkv,ln_q,ln_k}`), the same
`block_mixing` order and attention. So the stand-in loads the WebUI stand-in's miniature
(tests/webui_stub/modules/models/sd3/mmdit.py) as this module, and adds Forge's forward
signature (`control`, `transformer_options` beside x, t, y, context)."""

import importlib.util
import sys
from pathlib import Path

_source = Path(__file__).resolve().parents[3] / "webui_stub" / "modules" / "models" / "sd3" / "mmdit.py"
_spec = importlib.util.spec_from_file_location(__name__ + "._webui_layout", _source)
_layout = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _layout
_spec.loader.exec_module(_layout)


class MMDiTX(_layout.MMDiT):
    def forward(self, x, t, y=None, context=None, control=None, transformer_options=None, **kwargs):
        return super().forward(x, t, y=y, context=context)
