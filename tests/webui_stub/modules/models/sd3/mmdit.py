"""SD3's MMDiT as WebUI 1.10.1 runs it (modules/models/sd3/mmdit.py, read at kklouzal's
v1.10.1 snapshot 44480451, written here anew in miniature): what SEGA's masks rely on is kept
— the module names (`joint_blocks.N.{context_block,x_block}.attn.{qkv,ln_q,ln_k,proj}`), the
q/k norms applied per head to [B, L, heads, head_dim] (`split_qkv`), `block_mixing`'s order
(the context block's pre-attention, then the image block's, then ONE attention over
[context; image] with the usual 1/√d, no RoPE: positions are a fixed embedding added to the
patches), the last block's context side `pre_only`, the register tokens put in front of the
context (`register_length`, 0 in SD3 Medium), 2 × 2 patches. Tiny sizes, random weights."""

from __future__ import annotations

import math

import torch
from torch import nn


def split_qkv(qkv, head_dim):
    qkv = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1, head_dim).movedim(2, 0)
    return qkv[0], qkv[1], qkv[2]


def attention(q, k, v, heads):
    b, _, dim = q.shape
    q, k, v = (t.view(b, -1, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, -1, dim)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + (0 if shift is None else shift.unsqueeze(1))


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return torch.rms_norm(x, [x.shape[-1]], self.weight, 1e-6)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads, pre_only=False, qk_norm=None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        self.pre_only = pre_only
        self.ln_q = RMSNorm(self.head_dim) if qk_norm == "rms" else nn.Identity()
        self.ln_k = RMSNorm(self.head_dim) if qk_norm == "rms" else nn.Identity()

    def pre_attention(self, x):
        q, k, v = split_qkv(self.qkv(x), self.head_dim)
        q = self.ln_q(q).reshape(q.shape[0], q.shape[1], -1)
        k = self.ln_k(k).reshape(q.shape[0], q.shape[1], -1)
        return q, k, v

    def post_attention(self, x):
        return self.proj(x)


class DismantledBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=2.0, pre_only=False, qk_norm=None):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, pre_only=pre_only, qk_norm=qk_norm)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(hidden_size, int(hidden_size * mlp_ratio)), nn.GELU(approximate="tanh"),
                                     nn.Linear(int(hidden_size * mlp_ratio), hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, (2 if pre_only else 6) * hidden_size))

    def pre_attention(self, x, c):
        if not self.pre_only:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
            qkv = self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa))
            return qkv, (x, gate_msa, shift_mlp, scale_mlp, gate_mlp)
        shift_msa, scale_msa = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa)), None

    def post_attention(self, attn, x, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        x = x + gate_msa.unsqueeze(1) * self.attn.post_attention(attn)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


def block_mixing(context, x, context_block, x_block, c):
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    x_qkv, x_intermediates = x_block.pre_attention(x, c)
    q, k, v = (torch.cat((context_qkv[t], x_qkv[t]), dim=1) for t in range(3))
    attn = attention(q, k, v, x_block.attn.num_heads)
    context_attn, x_attn = attn[:, : context_qkv[0].shape[1]], attn[:, context_qkv[0].shape[1]:]
    context = None if context_block.pre_only else context_block.post_attention(context_attn, *context_intermediates)
    return context, x_block.post_attention(x_attn, *x_intermediates)


class JointBlock(nn.Module):
    def __init__(self, *args, pre_only=False, qk_norm=None, **kwargs):
        super().__init__()
        self.context_block = DismantledBlock(*args, pre_only=pre_only, qk_norm=qk_norm, **kwargs)
        self.x_block = DismantledBlock(*args, pre_only=False, qk_norm=qk_norm, **kwargs)

    def forward(self, *args, **kwargs):
        return block_mixing(*args, context_block=self.context_block, x_block=self.x_block, **kwargs)


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MMDiT(nn.Module):
    def __init__(self, in_channels=16, hidden_size=48, num_heads=4, depth=4, context_dim=48, adm_in_channels=40,
                 max_grid=16, register_length=0, qk_norm=None):
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.patch_size = 2
        self.register_length = register_length
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, 2, stride=2)
        self.pos_embed = nn.Parameter(torch.randn(1, max_grid * max_grid, hidden_size) * 0.5)
        self.max_grid = max_grid
        self.t_embedder = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Sequential(nn.Linear(adm_in_channels, hidden_size), nn.SiLU(),
                                        nn.Linear(hidden_size, hidden_size))
        self.context_embedder = nn.Linear(context_dim, hidden_size)
        if register_length:
            self.register = nn.Parameter(torch.randn(1, register_length, hidden_size))
        self.joint_blocks = nn.ModuleList([JointBlock(hidden_size, num_heads, pre_only=i == depth - 1, qk_norm=qk_norm)
                                           for i in range(depth)])
        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_linear = nn.Linear(hidden_size, 4 * in_channels)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def cropped_pos_embed(self, h, w):
        grid = self.pos_embed.view(1, self.max_grid, self.max_grid, -1)
        top, left = (self.max_grid - h) // 2, (self.max_grid - w) // 2
        return grid[:, top : top + h, left : left + w].reshape(1, h * w, -1)

    def forward(self, x, t, y=None, context=None):
        b, c, height, width = x.shape
        h, w = height // 2, width // 2
        hidden = self.x_embedder(x).flatten(2).transpose(1, 2) + self.cropped_pos_embed(h, w)
        cond = self.t_embedder(timestep_embedding(t, 256).to(x.dtype)) + self.y_embedder(y)
        context = self.context_embedder(context)
        if self.register_length:
            context = torch.cat((self.register.expand(b, -1, -1), context), 1)
        for block in self.joint_blocks:
            context, hidden = block(context, hidden, c=cond)
        shift, scale = self.final_modulation(cond).chunk(2, dim=1)
        out = self.final_linear(modulate(self.final_norm(hidden), shift, scale))
        out = out.view(b, h, w, 2, 2, c).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c, height, width)
