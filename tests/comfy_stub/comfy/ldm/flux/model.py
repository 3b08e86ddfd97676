"""comfy/ldm/flux/model.py `Flux`: `forward(x, timestep, context, y, guidance, control,
transformer_options)` patchifies 2 × 2, and `forward_orig` calls each double block with the
call's `transformer_options` (which carries `cond_or_uncond`, and `block_type` /
`block_index` set per block), then the single blocks. The blocks are layers.py's; the weights
and sizes are the Forge stand-in's tiny Flux. Not mirrored: the "dit" block replacements,
`post_input` patches, ControlNet, reference latents (Kontext), attention masks."""

import torch

from comfy.ldm.flux import layers
from comfy.ldm.flux.math import bfl


class Flux(bfl.IntegratedFluxTransformer2DModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for block in self.double_blocks:
            block.__class__ = layers.DoubleStreamBlock
        for block in self.single_blocks:
            block.__class__ = layers.SingleStreamBlock

    @property
    def dtype(self):
        return self.img_in.weight.dtype

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None, transformer_options={}):  # noqa: B006
        transformer_options = transformer_options.copy()
        img = self.img_in(img)
        vec = self.time_in(bfl.timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(bfl.timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        transformer_options["total_blocks"] = len(self.double_blocks)
        transformer_options["block_type"] = "double"
        for i, block in enumerate(self.double_blocks):
            transformer_options["block_index"] = i
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe, attn_mask=None, transformer_options=transformer_options)
        img = torch.cat((txt, img), 1)
        transformer_options["block_type"] = "single"
        for i, block in enumerate(self.single_blocks):
            transformer_options["block_index"] = i
            img = block(img, vec=vec, pe=pe, transformer_options=transformer_options)
        return self.final_layer(img[:, txt.shape[1]:, ...], vec)

    def forward(self, x, timestep, context, y=None, guidance=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        bs, c, h, w = x.shape
        h_len, w_len = (h + 1) // 2, (w + 1) // 2
        x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="circular")
        img = x.view(bs, c, h_len, 2, w_len, 2).permute(0, 2, 4, 1, 3, 5).reshape(bs, h_len * w_len, c * 4)
        rows = torch.arange(h_len, device=x.device, dtype=x.dtype)[:, None].expand(h_len, w_len)
        cols = torch.arange(w_len, device=x.device, dtype=x.dtype)[None, :].expand(h_len, w_len)
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(1, -1, 3).expand(bs, -1, -1)
        txt_ids = torch.zeros((bs, context.shape[1], 3), device=x.device, dtype=x.dtype)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, y, guidance, transformer_options)
        out = out.view(bs, h_len, w_len, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(bs, c, h_len * 2, w_len * 2)
        return out[:, :, :h, :w]
