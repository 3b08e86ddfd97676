"""comfy/ldm/modules/diffusionmodules/mmdit.py: SD3's MMDiT with ComfyUI's calls — each joint
block called as `block(context, x, c=, use_checkpoint=, transformer_options=)` with the call's
`transformer_options` (its `cond_or_uncond`), the model as `forward(x, timesteps, context, y,
control, transformer_options)`. The layout (`joint_blocks.N.{context_block,x_block}.attn.
{qkv,ln_q,ln_k}`, [B, L, heads, head_dim] q/k, one attention over [context; image], 2 × 2
patches) and tiny weights are the WebUI stand-in's SD3 (tests/webui_stub/modules/models/sd3/
mmdit.py, loaded here under a private name), which both hosts take from SAI's reference."""

import importlib.util
from pathlib import Path

import torch

_path = Path(__file__).resolve().parents[5] / "webui_stub" / "modules" / "models" / "sd3" / "mmdit.py"
_spec = importlib.util.spec_from_file_location("comfy.ldm.modules.diffusionmodules._sai_mmdit", _path)
sai = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sai)


class JointBlock(sai.JointBlock):
    def forward(self, context, x, c, use_checkpoint=False, transformer_options={}):  # noqa: B006
        return super().forward(context, x, c=c)


class OpenAISignatureMMDITWrapper(sai.MMDiT):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for block in self.joint_blocks:
            block.__class__ = JointBlock

    @property
    def dtype(self):
        return self.final_linear.weight.dtype

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        b, c, height, width = x.shape
        h, w = height // 2, width // 2
        hidden = self.x_embedder(x).flatten(2).transpose(1, 2) + self.cropped_pos_embed(h, w)
        cond = self.t_embedder(sai.timestep_embedding(timesteps, 256).to(x.dtype)) + self.y_embedder(y)
        context = self.context_embedder(context)
        if self.register_length:
            context = torch.cat((self.register.expand(b, -1, -1), context), 1)
        for block in self.joint_blocks:
            context, hidden = block(context, hidden, c=cond, use_checkpoint=False,
                                    transformer_options=transformer_options)
        shift, scale = self.final_modulation(cond).chunk(2, dim=1)
        out = self.final_linear(sai.modulate(self.final_norm(hidden), shift, scale))
        return out.view(b, h, w, 2, 2, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)
