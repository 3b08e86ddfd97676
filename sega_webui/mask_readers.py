"""Which reader the implicit masks get on a model, chosen in one place for every host:
the cross-attention layers (attention.py: forward hooks on the WebUI, the `attn2_patch` on
Forge and reForge) or an MMDiT's joint attention (joint_attention.py: SD3 on the WebUI,
Flux on Forge)."""

from __future__ import annotations

from sega_webui import attention, joint_attention


def for_webui(model):
    """The reader for the WebUI's model: its cross-attention layers or, where it has none
    (SD3), its joint-attention blocks; a model with neither gets the cross-attention reader,
    whose read-back says what is missing."""
    if not attention.attention_layers(model):
        root = getattr(getattr(model, "model", None), "diffusion_model", None) or model
        joint = joint_attention.JointAttention(root)
        if joint.blocks:
            return joint
    return attention.ConceptAttention(model, attention.hypernetwork_keys())


def for_patcher(diffusion_model, joint: bool):
    """The reader on Forge and reForge: the cross-attention layers through the `attn2_patch`
    or (`joint`: the host's concept call can be watched alone) a Flux-shaped model's joint
    attention; None if neither can be read."""
    patched = attention.PatchedAttention(diffusion_model)
    if patched.by_block:
        return patched
    if joint:
        observer = joint_attention.JointAttention(diffusion_model)
        if observer.blocks:
            return observer
    return None


def prepare_call(pass_, record, call: int, schedule_index, arm: bool) -> None:
    """The concepts' token columns for this call, and (`arm`: widened path) the reader armed
    for the host's model call; the separate path arms it for its own call."""
    if pass_.masks is None:
        pass_.masks = for_webui(pass_.model)
    masks = pass_.masks
    record.mask_columns = attention.concept_columns(pass_, pass_.model, record.active, record.batch, call,
                                                    schedule_index, record.x.device, masks.tokenizer(pass_.model))
    if arm:
        masks.arm(record.cond_rows, len(record.active) * record.batch, masks.grid(*record.x.shape[-2:]),
                  record.mask_columns)
