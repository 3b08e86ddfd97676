"""Flux's transformer as Forge runs it (backend/nn/flux.py `IntegratedFluxTransformer2DModel`,
Forge dfdcbab6), written here after Black Forest Labs' reference (flux/modules/layers.py and
model.py, Apache-2.0), whose layout Forge keeps. What SEGA relies on is kept exactly: the
module names (`double_blocks.N.img_attn.{qkv,norm,proj}`, `txt_attn`, `single_blocks`), the
forward signatures (`block(img=, txt=, vec=, pe=)`), the order in which a double-stream block
calls its parts (img_attn.qkv → img_attn.norm → txt_attn.qkv → txt_attn.norm → one joint
attention over [txt; img] with RoPE applied to q and k), the 2 × 2 patching with its position
ids, and the timestep and guidance embeddings (×1000). Sizes are tiny."""

from __future__ import annotations

import math

import torch
from torch import nn


def rope(pos, dim, theta):
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta ** scale)
    out = pos.unsqueeze(-1).double() * omega.unsqueeze(0)
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    b, n, d, _ = out.shape
    return out.view(b, n, d, 2, 2).float()


def apply_rope(xq, xk, freqs_cis):
    xq_ = xq.float().reshape(*xq.shape[:-1], -1, 1, 2)
    xk_ = xk.float().reshape(*xk.shape[:-1], -1, 1, 2)
    xq_out = freqs_cis[..., 0] * xq_[..., 0] + freqs_cis[..., 1] * xq_[..., 1]
    xk_out = freqs_cis[..., 0] * xk_[..., 0] + freqs_cis[..., 1] * xk_[..., 1]
    return xq_out.reshape(*xq.shape).type_as(xq), xk_out.reshape(*xk.shape).type_as(xk)


def attention(q, k, v, pe):
    """[B, H, L, D] each → [B, L, H·D] (Forge's attention_function with skip_reshape)."""
    q, k = apply_rope(q, k, pe)
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def timestep_embedding(t, dim, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t)


class EmbedND(nn.Module):
    def __init__(self, dim, theta, axes_dim):
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, axes_dim

    def forward(self, ids):
        emb = torch.cat([rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])], dim=-3)
        return emb.unsqueeze(1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x):
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return torch.rms_norm(x, [x.shape[-1]], self.scale, 1e-6)


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q, k, v):
        q, k = self.query_norm(q), self.key_norm(k)
        return q.to(v), k.to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec):
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _split(qkv, heads):
    b, n, _ = qkv.shape
    return qkv.view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=2.0):
        super().__init__()
        mlp = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        for side in ("img", "txt"):
            setattr(self, f"{side}_mod", Modulation(hidden_size, double=True))
            setattr(self, f"{side}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{side}_attn", SelfAttention(hidden_size, num_heads))
            setattr(self, f"{side}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{side}_mlp", nn.Sequential(nn.Linear(hidden_size, mlp), nn.GELU(approximate="tanh"),
                                                      nn.Linear(mlp, hidden_size)))

    def forward(self, img, txt, vec, pe):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        img_q, img_k, img_v = _split(self.img_attn.qkv((1 + i_scale1) * self.img_norm1(img) + i_shift1), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        txt_q, txt_k, txt_v = _split(self.txt_attn.qkv((1 + t_scale1) * self.txt_norm1(txt) + t_shift1), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        attn = attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                         torch.cat((txt_v, img_v), dim=2), pe=pe)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + i_gate1 * self.img_attn.proj(img_attn)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * self.img_norm2(img) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_attn)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * self.txt_norm2(txt) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=2.0):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x, vec, pe):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1((1 + scale) * self.pre_norm(x) + shift),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = _split(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe=pe)
        return x + gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))


class LastLayer(nn.Module):
    def __init__(self, hidden_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(self, in_channels=4, vec_in_dim=8, context_in_dim=32, hidden_size=32, mlp_ratio=2.0, num_heads=2,
                 depth=4, depth_single_blocks=2, axes_dim=(4, 6, 6), theta=10000, guidance_embed=True):
        super().__init__()
        self.guidance_embed = guidance_embed
        self.in_channels = self.out_channels = in_channels * 4
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.pe_embedder = EmbedND(hidden_size // num_heads, theta, list(axes_dim))
        self.img_in = nn.Linear(self.in_channels, hidden_size)
        self.time_in = MLPEmbedder(256, hidden_size)
        self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
        self.guidance_in = MLPEmbedder(256, hidden_size) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth_single_blocks)])
        self.final_layer = LastLayer(hidden_size, self.out_channels)

    def inner_forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_embed:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec=vec, pe=pe)
        return self.final_layer(img[:, txt.shape[1]:, ...], vec)

    def forward(self, x, timestep, context, y, guidance=None, **kwargs):
        bs, c, h, w = x.shape
        x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="circular")
        h_len, w_len = (h + 1) // 2, (w + 1) // 2
        img = x.view(bs, c, h_len, 2, w_len, 2).permute(0, 2, 4, 1, 3, 5).reshape(bs, h_len * w_len, c * 4)
        img_ids = torch.zeros((h_len, w_len, 3), device=x.device, dtype=x.dtype)
        img_ids[..., 1] += torch.linspace(0, h_len - 1, h_len, device=x.device, dtype=x.dtype)[:, None]
        img_ids[..., 2] += torch.linspace(0, w_len - 1, w_len, device=x.device, dtype=x.dtype)[None, :]
        img_ids = img_ids.reshape(1, h_len * w_len, 3).expand(bs, -1, -1)
        txt_ids = torch.zeros((bs, context.shape[1], 3), device=x.device, dtype=x.dtype)
        out = self.inner_forward(img, img_ids, context, txt_ids, timestep, y, guidance)
        out = out.view(bs, h_len, w_len, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(bs, c, h_len * 2, w_len * 2)
        return out[:, :, :h, :w]
