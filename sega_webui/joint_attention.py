"""The WebUI side of the joint-attention masks (the reader itself is host-free:
sega/joint_attention.py): where a concept's words sit in the context of the WebUI's SD3 and
of Forge's Flux and SD3."""

from __future__ import annotations

from sega import joint_attention as joint
from sega.attention import MaskError, token_positions


class JointAttention(joint.JointAttention):
    """The reader with the WebUI's tokenizers."""

    def tokenizer(self, sd_model):
        """What finds the concepts' words in the text the blocks attend to: Forge's T5 engine
        for Flux (CLIP-L gives it only the pooled vector); for the WebUI's SD3, CLIP-L/G's
        chunks and, where T5 is on, T5's tokens of the same text behind them."""
        if self.layout is not None and self.layout.name == "sd3":
            return sd3_positions(sd_model)
        engine = getattr(sd_model, "text_processing_engine_t5", None)
        if not hasattr(engine, "tokenize_line"):
            raise MaskError("the mask needs the model's T5 tokenizer to find the concepts' words, and this model "
                            "has none")
        return engine


def sd3_positions(sd_model):
    """text → its token columns in SD3's context: the WebUI's [CLIP-L/G chunks; T5 tokens of
    the same count] (modules/models/sd3/sd3_cond.py), Forge's [CLIP-L/G chunks; T5's own
    chunk] (backend/diffusion_engine/sd35.py): the CLIP words in their chunks, and the T5
    words (no start token) behind the CLIP part, when T5 is on (else its rows are zeros)."""
    engine_l, engine_t5 = (getattr(sd_model, f"text_processing_engine_{n}", None) for n in ("l", "t5"))
    if hasattr(engine_l, "tokenize_line") and hasattr(engine_t5, "tokenize_line"):
        t5_on = _t5_enabled()

        def forge_positions(text):
            chunks, _ = engine_l.tokenize_line(text)
            length = sum(len(c.tokens) for c in chunks)
            out = token_positions(engine_l, text)
            return out + [length + i for i in token_positions(engine_t5, text)] if t5_on else out

        return forge_positions
    cond = getattr(sd_model, "cond_stage_model", None)
    lg, t5 = getattr(cond, "model_lg", None), getattr(cond, "model_t5", None)
    if not hasattr(lg, "tokenize_line"):
        raise MaskError("the mask needs SD3's CLIP tokenizer (cond_stage_model.model_lg) to find the concepts' words, "
                        "and this model has none")
    t5_on = t5 is not None and getattr(t5, "t5xxl", None) is not None and _t5_enabled()

    def positions(text):
        chunks, _ = lg.tokenize_line(text)
        length = sum(len(c.tokens) for c in chunks)
        out = token_positions(lg, text)
        if t5_on:
            tokens, _ = t5.tokenize_line(text, target_token_count=length)
            count = next((i for i, t in enumerate(tokens) if t == t5.id_end), len(tokens))
            out += [length + i for i in range(count)]
        return out

    return positions


def _t5_enabled() -> bool:
    try:
        from modules import shared
    except ImportError:
        return True
    return bool(getattr(shared.opts, "sd3_enable_t5", False))
