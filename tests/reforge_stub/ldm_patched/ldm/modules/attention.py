"""ldm_patched/ldm/modules/attention.py: what `BasicTransformerBlock.forward` does around its
cross-attention, applied to the tiny (diffusers) UNet's blocks by `openaimodel.UNetModel`.

`extra_options` is every `transformer_options` key but `patches` / `patches_replace` (so
`block`, `block_index`, `transformer_index`, `cond_or_uncond`, `uuids`, `sigmas`,
`original_shape`, `activations_shape`, and any custom key), plus `n_heads`, `dim_head`,
`attn_precision`. Each `attn2_patch` is called as `fn(n, context, value, extra_options)` →
(n, context, value) with n = the normed hidden states and context = value = the text
conditioning, in turn, before `attn2`; attn2 then attends with keys from `context` and
values from `value`. reForge's `CrossAttention.forward(x, context, value, mask)` gets no
`transformer_options`."""

import torch


def extra_options(transformer_options, attn):
    extra = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
    extra["n_heads"] = attn.heads
    extra["dim_head"] = attn.to_q.out_features // attn.heads
    extra["attn_precision"] = None
    return extra


def attention(attn, n, context, value):
    """CrossAttention.forward with a separate `value` (diffusers' Attention has no such argument)."""
    b, h = n.shape[0], attn.heads

    def heads(t):
        return t.view(b, t.shape[1], h, -1).transpose(1, 2)

    q, k, v = heads(attn.to_q(n)), heads(attn.to_k(context)), heads(attn.to_v(value))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, q.shape[-1] * h)
    return attn.to_out[1](attn.to_out[0](out))


def patched_attn2_forward(attn, block_index, transformer_options, patches):
    """The instance `forward` the stand-in puts on a diffusers `attn2` for one model call."""

    def forward(hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        miniature = "context" in kwargs  # tests/tiny_models' ldm-named attention: forward(x, context)
        if miniature:
            encoder_hidden_states = kwargs.pop("context")
        transformer_options["block_index"] = block_index
        extra = extra_options(transformer_options, attn)
        n = hidden_states
        context = value = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        for p in patches:
            n, context, value = p(n, context, value, extra)
        if value is not context:
            return attention(attn, n, context, value)
        if miniature:
            return type(attn).forward(attn, n, context=context)
        return type(attn).forward(attn, n, encoder_hidden_states=context, attention_mask=attention_mask, **kwargs)

    return forward
