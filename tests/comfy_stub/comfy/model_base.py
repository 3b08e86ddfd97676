"""comfy/model_base.py: reForge's `BaseModel` (see _reforge.py: `apply_model` with the
APPLY_MODEL wrappers, c_in, `c_concat`, σ → timestep, x0 out; `calls` and `timesteps` record
each call) plus what ComfyUI 0.8.0's classes add on it: `extra_conds` (the model conds a cond
dict becomes: `c_crossattn` CONDCrossAttn, `y` from `encode_adm`), `process_latent_in/out`
(identity: the tiny VAE-less latents have scale 1). `SDXL.encode_adm`: the pooled output and
the size, as the tiny SDXL's vector. `Flux.extra_conds`: `c_crossattn` CONDRegular and
`guidance` (the dict's value, default 3.5; None → left out) and `y` (the pooled output).
`SD3.extra_conds`: `c_crossattn` CONDRegular and `y`."""

import torch

from comfy import conds
from comfy._reforge import reuse

reuse("modules/model_base.py", globals())
_ReforgeBase = BaseModel  # noqa: F821 - defined by reuse()


class BaseModel(_ReforgeBase):
    def extra_conds(self, **kwargs):
        out = {}
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            out["c_crossattn"] = conds.CONDCrossAttn(cross_attn)
        adm = self.encode_adm(**kwargs)
        if adm is not None:
            out["y"] = conds.CONDRegular(adm)
        return out

    def encode_adm(self, **kwargs):
        return None

    def process_latent_in(self, latent):
        return latent

    def process_latent_out(self, latent):
        return latent


class SDXL(BaseModel):
    VECTOR = 8

    def encode_adm(self, **kwargs):
        pooled = kwargs["pooled_output"][:, : self.VECTOR - 2]
        pooled = torch.nn.functional.pad(pooled, (0, self.VECTOR - 2 - pooled.shape[1]))
        size = torch.tensor([[kwargs["width"] / 1024, kwargs["height"] / 1024]]).expand(pooled.shape[0], 2)
        return torch.cat([pooled, size.to(pooled)], dim=1)


class SD3(BaseModel):
    def extra_conds(self, **kwargs):
        out = {"c_crossattn": conds.CONDRegular(kwargs["cross_attn"])}
        if kwargs.get("pooled_output") is not None:
            out["y"] = conds.CONDRegular(kwargs["pooled_output"])
        return out


class Flux(BaseModel):
    def extra_conds(self, **kwargs):
        out = {"c_crossattn": conds.CONDRegular(kwargs["cross_attn"])}
        if kwargs.get("pooled_output") is not None:
            out["y"] = conds.CONDRegular(kwargs["pooled_output"])
        guidance = kwargs.get("guidance", 3.5)
        if guidance is not None:
            out["guidance"] = conds.CONDRegular(torch.FloatTensor([guidance]))
        return out
