"""comfy/sampler_helpers.py: `convert_cond` (a CONDITIONING [[tensor, dict], …] → cond dicts with
`cross_attn`, empty `model_conds`, a fresh `uuid`) and `prepare_sampling` (the BaseModel; the
memory manager's loading is not mirrored)."""

import uuid


def convert_cond(cond):
    out = []
    for c in cond:
        temp = c[1].copy()
        model_conds = temp.get("model_conds", {})
        if c[0] is not None:
            temp["cross_attn"] = c[0]
        temp["model_conds"] = model_conds
        temp["uuid"] = uuid.uuid4()
        out.append(temp)
    return out


def prepare_sampling(model, noise_shape, conds, model_options=None):
    return model.model, conds, []
