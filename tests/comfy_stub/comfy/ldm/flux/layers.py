"""comfy/ldm/flux/layers.py `DoubleStreamBlock`: Black Forest Labs' block (module names
`img_attn.{qkv,norm,proj}`, `txt_attn.…`; q/k from the QK norms; [txt; img] joint attention
with RoPE) with ComfyUI's call: `block(img=, txt=, vec=, pe=, attn_mask=, transformer_options=)`."""

from comfy.ldm.flux.math import attention, bfl  # noqa: F401 - `attention` is what ComfyUI's blocks call


class DoubleStreamBlock(bfl.DoubleStreamBlock):
    def forward(self, img, txt, vec, pe, attn_mask=None, modulation_dims_img=None, modulation_dims_txt=None,
                transformer_options={}):  # noqa: B006
        return super().forward(img, txt, vec, pe)


class SingleStreamBlock(bfl.SingleStreamBlock):
    def forward(self, x, vec, pe, attn_mask=None, modulation_dims=None, transformer_options={}):  # noqa: B006
        return super().forward(x, vec, pe)
