"""The SEGA nodes for ComfyUI (V1 node classes, as core's KSampler and CLIPTextEncode: their
`VALIDATE_INPUTS` turns a mistake in the concepts into a validation error on the node before
anything samples). Settings, ranges and help come from `sega.fields.FIELDS`, the concepts
from the WebUI's concept language (`sega.concepts`): one text, the same meaning in every
host."""

from __future__ import annotations

from sega.args import SegaArgs
from sega.concepts import Concept, parse_overrides
from sega.errors import SegaInputError
from sega.fields import BY_NAME

from .edit import SegaEditNode, SegaInversionSamplerNode, SegaInvertNode
from .maps import SegaMapsNode
from .patch import SegaPatch

CATEGORY = "sampling/SEGA"
CONCEPTS_TYPE = "SEGA_CONCEPTS"
NUMBERS = ("scale", "threshold", "weight", "momentum_scale", "momentum_beta")
STEPS = ("warmup", "cooldown")
NO_MASKS = ("a concept given as conditioning has no words whose attention an implicit mask could read "
            "(mask=attention / intersect); use mask=threshold, or give the concept as text")


def _number(name: str) -> tuple:
    f = BY_NAME[name]
    return ("FLOAT", {"default": f.default, "min": f.minimum, "max": f.maximum, "step": f.step,
                      "tooltip": f.help})


def _steps(name: str) -> tuple:
    f = BY_NAME[name]
    return ("STRING", {"default": f.format(f.default) if f.default is not None else "", "tooltip": f.help})


def settings(concepts: str = "", **values) -> SegaArgs:
    """The node's widget values as SEGA's args; SegaInputError names the input and, for the
    concepts, the line."""
    named = {"enabled": True, "concepts": concepts or ""}
    named.update({k: v for k, v in values.items() if k in (*NUMBERS, *STEPS, "mask") and v is not None})
    if named.get("cooldown") == "":
        named["cooldown"] = None
    args = SegaArgs.from_named(named)
    for i, concept in enumerate(args.concepts, start=1):
        _check_concept(args, concept, f"concepts[{i}]")
    return args


def _check_concept(args: SegaArgs, concept: Concept, name: str) -> None:
    if concept.networks:
        raise SegaInputError(name, f"{', '.join(concept.networks)} is WebUI syntax; in ComfyUI load LoRAs with "
                             "a LoRA loader node before the SEGA node")


def _message(e: SegaInputError) -> str:
    # The concepts' limit is the WebUI's setting; ComfyUI keeps the default.
    return f"{e.field}: {e.problem}".replace(" (Settings → SEGA)", "")


def _acts(args: SegaArgs) -> bool:
    return any(args.effective(c)["scale"] != 0 and args.effective(c)["weight"] > 0 for c in args.concepts)


class SegaGuidanceNode:
    """SEGA on a model: the concepts steer every sampler that uses the returned model."""

    DESCRIPTION = ("Semantic guidance (SEGA): steers the image towards or away from concepts while keeping its "
                   "composition. One concept per line; '-' steers away; 'text :: scale=7 warmup=10%' sets one "
                   "concept's own settings; '#' starts a comment.")
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP", {"tooltip": "Encodes the concepts (the CLIP the prompt was encoded with)."}),
                "concepts": ("STRING", {"multiline": True, "default": "", "tooltip": BY_NAME["concepts"].help}),
                **{name: _number(name) for name in NUMBERS[:3]},
                **{name: _steps(name) for name in STEPS},
                **{name: _number(name) for name in NUMBERS[3:]},
                "mask": (list(BY_NAME["mask"].choices), {"default": BY_NAME["mask"].default,
                                                         "tooltip": BY_NAME["mask"].help}),
            },
            "optional": {
                "negative": ("CONDITIONING", {
                    "tooltip": "What SEGA steers against where the sampler evaluates no negative prompt (CFG 1, "
                               "BasicGuider); default: the empty prompt."}),
                "concept_conditionings": (CONCEPTS_TYPE, {
                    "tooltip": "More concepts given as conditioning (SEGA Concept nodes)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, concepts=None, scale=None, threshold=None, weight=None, warmup=None, cooldown=None,
                        momentum_scale=None, momentum_beta=None):
        try:
            settings(concepts, scale=scale, threshold=threshold, weight=weight, warmup=warmup, cooldown=cooldown,
                     momentum_scale=momentum_scale, momentum_beta=momentum_beta)
        except SegaInputError as e:
            return _message(e)
        return True

    def apply(self, model, clip, concepts, scale, threshold, warmup, cooldown, weight, momentum_scale,
              momentum_beta, mask="threshold", negative=None, concept_conditionings=None):
        args = settings(concepts, scale=scale, threshold=threshold, weight=weight, warmup=warmup,
                        cooldown=cooldown, momentum_scale=momentum_scale, momentum_beta=momentum_beta, mask=mask)
        extra = list(concept_conditionings or ())
        args = args.with_values(concepts=args.concepts + tuple(c for c, _ in extra))
        args.check_order()
        for i, (made, _) in enumerate(extra, start=len(args.concepts) - len(extra) + 1):
            if args.effective(made)["mask"] != "threshold":
                raise SegaInputError(f"concepts[{i}]", NO_MASKS)
        if not _acts(args):
            return (model,)  # nothing to steer: the model as it came, bit for bit
        texts = [c.text for c in args.concepts[: len(args.concepts) - len(extra)]]
        encoded = [_encode(clip, text) for text in texts]
        conds = [cond for cond, _ in encoded] + [cond for _, cond in extra]
        columns = [cols for _, cols in encoded] + [None] * len(extra)
        if negative is None:
            negative = _encode(clip, "")[0]
        # Tracking where concepts act changes no image (sega/maps.py); the maps node reads it.
        return (SegaPatch(args.with_values(show_maps=True), conds, negative, columns).install(model),)


ENCODED_KEPT = 32  # encodings kept per CLIP


def _encode(clip, text: str):
    """(CONDITIONING, where the text's own words are in each encoder's tokens: {encoder:
    (token columns, token count)}). ComfyUI's own prompt language applies: (word:1.2)
    weights, embedding:name. Kept on the CLIP object (a LoRA'd or reloaded CLIP is another
    object): changing a setting re-runs this node, and a T5 encoding costs seconds."""
    kept = getattr(clip, "_sega_encoded", None)
    if kept is None:
        kept = {}
        try:
            clip._sega_encoded = kept
        except AttributeError:  # a CLIP that takes no attributes: encode every time
            pass
    if text not in kept:
        if len(kept) >= ENCODED_KEPT:
            kept.pop(next(iter(kept)))
        kept[text] = _encode_now(clip, text)
    return kept[text]


def _encode_now(clip, text: str):
    tokens = clip.tokenize(text, return_word_ids=True)
    words = {}
    for key, chunks in tokens.items():
        columns = [c * len(chunk) + j for c, chunk in enumerate(chunks) for j, token in enumerate(chunk)
                   if len(token) > 2 and token[2] != 0]
        words[key] = (columns, sum(len(chunk) for chunk in chunks))
    stripped = {key: [[token[:2] for token in chunk] for chunk in value] for key, value in tokens.items()}
    return clip.encode_from_tokens_scheduled(stripped), words


class SegaConceptNode:
    """A concept given as conditioning (Flux's dual encoders, a LoRA'd CLIP, combined
    conditionings), chained into the SEGA node's `concept_conditionings`."""

    DESCRIPTION = "One SEGA concept from a CONDITIONING, with the settings a concept line takes after '::'."
    RETURN_TYPES = (CONCEPTS_TYPE,)
    RETURN_NAMES = ("concept_conditionings",)
    FUNCTION = "add"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "direction": (["toward", "away"], {"default": "toward"}),
                "settings": ("STRING", {"default": "", "tooltip": "e.g. scale=7 threshold=0.9 warmup=10% "
                                        "(empty: the SEGA node's settings)"}),
            },
            "optional": {"concept_conditionings": (CONCEPTS_TYPE,)},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, settings=None):
        try:
            concept(settings or "", "toward")
        except SegaInputError as e:
            return _message(e)
        return True

    def add(self, conditioning, direction, settings, concept_conditionings=None):
        entry = (concept(settings, direction, 1 + len(concept_conditionings or ())), conditioning)
        return ((*(concept_conditionings or ()), entry),)


def concept(settings: str, direction: str, number: int = 1) -> Concept:
    try:
        overrides = parse_overrides(settings or "")
    except ValueError as e:
        raise SegaInputError("settings", str(e)) from None
    made = Concept(f"<conditioning {number}>", direction == "away", **overrides)
    if made.mask not in (None, "threshold"):
        raise SegaInputError("settings", NO_MASKS)
    return made


NODE_CLASS_MAPPINGS = {"SEGA": SegaGuidanceNode, "SEGAConcept": SegaConceptNode, "SEGAMaps": SegaMapsNode,
                       "SEGAInvert": SegaInvertNode, "SEGAEdit": SegaEditNode,
                       "SEGAInversionSampler": SegaInversionSamplerNode}
NODE_DISPLAY_NAME_MAPPINGS = {"SEGA": "SEGA (semantic guidance)", "SEGAConcept": "SEGA concept (conditioning)",
                              "SEGAMaps": "SEGA guidance maps", "SEGAInvert": "SEGA invert photo",
                              "SEGAEdit": "SEGA edit photo", "SEGAInversionSampler": "SEGA inversion sampler"}
