"""The args model: every SEGA setting, typed, from the UI's positional values, an API
object or infotext — and back. The rows of `sega.fields.FIELDS` say what each one is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sega.concepts import DEFAULT_MAX_CONCEPTS, Concept, format_concepts, parse_concepts, split_networks
from sega.errors import SegaInputError, did_you_mean
from sega.fields import BY_NAME, CONCEPT_KEYS, FIELDS, describe_value
from sega.guidance import ConceptGuidance, SegaGuidance
from sega.steps import Steps

CONCEPT_OBJECT_KEYS = ("prompt", "reverse", *CONCEPT_KEYS)


@dataclass(frozen=True)
class SegaArgs:
    enabled: bool = BY_NAME["enabled"].default
    concepts: tuple[Concept, ...] = ()
    scale: float = BY_NAME["scale"].default
    threshold: float = BY_NAME["threshold"].default
    warmup: Steps = BY_NAME["warmup"].default
    cooldown: Steps | None = BY_NAME["cooldown"].default
    weight: float = BY_NAME["weight"].default
    momentum_scale: float = BY_NAME["momentum_scale"].default
    momentum_beta: float = BY_NAME["momentum_beta"].default
    hires: bool = BY_NAME["hires"].default
    show_maps: bool = BY_NAME["show_maps"].default
    invert: bool = BY_NAME["invert"].default
    mask: str = BY_NAME["mask"].default

    @property
    def active(self) -> bool:
        # An edit with no concepts still inverts and remakes the photo (asked for, not a no-op).
        return self.enabled and (bool(self.concepts) or self.invert)

    @property
    def uses_masks(self) -> bool:
        """Whether a concept acts through an implicit mask (sega/masks.py)."""
        return any(self.effective(c)["mask"] != "threshold" for c in self.concepts)

    # ---- reading -----------------------------------------------------------------------

    @classmethod
    def from_values(
        cls,
        values: Sequence[Any],
        max_concepts: int = DEFAULT_MAX_CONCEPTS,
        overrides: Mapping[Any, Any] | None = None,
    ) -> SegaArgs:
        """The script's args as the host passes them: the UI's positional values, or (API)
        a single named object in the first position, the rest being the UI defaults (which
        fill in what the object leaves out; the object form is enabled unless it says no).

        `overrides` (from X/Y/Z axes) replace settings before they are checked: a field
        name → value, "concepts_sr" → (search, replace) over the concepts text, and
        ("concept", k, key) → value for the k-th concept (1-based).
        """
        values = list(values)
        if values and isinstance(values[0], Mapping):
            # The WebUI fills the positions after the object with the UI's defaults (which
            # Settings may have changed): settings the object leaves out take those. Sending
            # an object means wanting SEGA, so it is on unless the object says otherwise.
            named = {f.name: v for f, v in zip(FIELDS[1:], values[1:], strict=False)}
            named["enabled"] = True
            named.update(values[0])
        else:
            if len(values) > len(FIELDS):
                raise SegaInputError(
                    "args", f"takes at most {len(FIELDS)} positional values, got {len(values)}"
                )
            named = {f.name: v for f, v in zip(FIELDS, values, strict=False)}
        per_concept = {}
        for key, value in (overrides or {}).items():
            if isinstance(key, tuple):
                per_concept[key] = value
            elif key == "concepts_sr":
                search, replace_with = value
                text = named.get("concepts") or ""
                if not isinstance(text, str):
                    raise SegaInputError("concepts", "search/replace needs the concepts as text")
                if search not in text:  # as the WebUI's Prompt S/R: a plot of identical cells says nothing
                    raise SegaInputError("concepts", f"Concepts S/R did not find {search!r} in the concepts")
                named["concepts"] = text.replace(search, replace_with)
            else:
                named[key] = value
        args = cls.from_named(named, max_concepts)
        if per_concept:
            args = args._with_concept_overrides(per_concept)
        return args

    def _with_concept_overrides(self, overrides: Mapping[tuple, Any]) -> SegaArgs:
        concepts = list(self.concepts)
        for (_, k, key), value in sorted(overrides.items(), key=lambda kv: kv[0][1:]):
            name = f"concepts[{k}].{key}"
            if not 1 <= k <= len(concepts):
                raise SegaInputError(name, f"there is no concept {k} (the concepts box has {len(concepts)})")
            try:
                coerced = BY_NAME[key].coerce(value)
            except SegaInputError as e:
                raise SegaInputError(name, e.problem) from None
            concepts[k - 1] = replace(concepts[k - 1], **{key: coerced})
        args = replace(self, concepts=tuple(concepts))
        args.check_order()
        return args

    @classmethod
    def from_named(cls, named: Mapping[str, Any], max_concepts: int = DEFAULT_MAX_CONCEPTS) -> SegaArgs:
        if not isinstance(named, Mapping):
            raise SegaInputError("args", f"must be an object of named settings, got {describe_value(named)}")
        known = [f.name for f in FIELDS]
        out: dict[str, Any] = {}
        for key, value in named.items():
            if key not in BY_NAME:
                raise SegaInputError(str(key), f"is not a SEGA setting{did_you_mean(key, known)}")
            if key == "concepts":
                out[key] = coerce_concepts(value, max_concepts)
            else:
                out[key] = BY_NAME[key].coerce(value)
        args = cls(**out)
        args.check_order()
        return args

    @classmethod
    def from_infotext(cls, params: Mapping[str, str], max_concepts: int = DEFAULT_MAX_CONCEPTS) -> SegaArgs | None:
        """The settings written by `to_infotext`, or None when the parameters hold no SEGA."""
        concepts_key = BY_NAME["concepts"].infotext
        if concepts_key not in params:
            return None
        named: dict[str, Any] = {"enabled": True}
        for f in FIELDS:
            if f.infotext and f.infotext in params:
                named[f.name] = params[f.infotext]
        return cls.from_named(named, max_concepts)

    # ---- writing -----------------------------------------------------------------------

    def to_infotext(self) -> dict[str, str]:
        """Generation parameters: the concepts plus every setting that is not its default."""
        if not self.active:
            return {}
        # The WebUI's parser (parse_generation_parameters) drops a key whose value is empty
        # ("Error parsing" on v[0]), so a run without concepts (an inversion check, `invert`
        # with an empty box) writes the empty text quoted: it reads back as "", SEGA on.
        out = {BY_NAME["concepts"].infotext: format_concepts(self.concepts) or '""'}
        for f in FIELDS:
            if f.infotext and f.name != "concepts":
                value = getattr(self, f.name)
                if value != f.default:
                    out[f.infotext] = f.format(value)
        return out

    def ui_values(self) -> list[Any]:
        """Positional values in the UI's order (the inverse of `from_values`)."""
        out = []
        for f in FIELDS:
            value = getattr(self, f.name)
            if f.name == "concepts":
                value = format_concepts(value)
            elif f.kind in ("steps", "optional_steps"):
                value = f.format(value)
            out.append(value)
        return out

    # ---- checks and resolution ----------------------------------------------------------

    def effective(self, concept: Concept) -> dict[str, Any]:
        """A concept's settings with the defaults filled in."""
        return {k: getattr(self, k) if getattr(concept, k) is None else getattr(concept, k) for k in CONCEPT_KEYS}

    def check_order(self) -> None:
        """Cooldown after warm-up, where both are in the same unit (else at `guidance`)."""
        for i, concept in enumerate(self.concepts, start=1):
            e = self.effective(concept)
            w, c = e["warmup"], e["cooldown"]
            if c is not None and w.percent == c.percent and c.value <= w.value:
                raise SegaInputError(
                    f"concepts[{i}]", f"cooldown ({c}) must come after warmup ({w}) for '{concept.text}'"
                )

    def concept_guidance(self, total_steps: int) -> list[ConceptGuidance]:
        """Each concept's settings for a pass of `total_steps` sampler steps."""
        out = []
        for i, concept in enumerate(self.concepts, start=1):
            e = self.effective(concept)
            warmup = e["warmup"].resolve(total_steps)
            cooldown = None if e["cooldown"] is None else e["cooldown"].resolve(total_steps)
            if cooldown is not None and cooldown <= warmup:
                raise SegaInputError(
                    f"concepts[{i}]",
                    f"cooldown ({e['cooldown']} = step {cooldown}) must come after warmup "
                    f"({e['warmup']} = step {warmup}) at {total_steps} steps for '{concept.text}'",
                )
            out.append(
                ConceptGuidance(
                    scale=e["scale"],
                    threshold=e["threshold"],
                    warmup=warmup,
                    cooldown=cooldown,
                    weight=e["weight"],
                    reverse=concept.reverse,
                    mask=e["mask"],
                )
            )
        return out

    def guidance(self, total_steps: int) -> SegaGuidance:
        return SegaGuidance(
            self.concept_guidance(total_steps), self.momentum_scale, self.momentum_beta, track_maps=self.show_maps
        )

    def with_values(self, **changes: Any) -> SegaArgs:
        return replace(self, **changes)


def coerce_concepts(value: Any, max_concepts: int = DEFAULT_MAX_CONCEPTS) -> tuple[Concept, ...]:
    """Concepts from concept-language text, or (API) a list of lines or objects."""
    if value is None:
        return ()
    if isinstance(value, str):
        BY_NAME["concepts"].coerce(value)  # length limit
        return parse_concepts(value, max_concepts).raise_for_errors()
    if not isinstance(value, (list, tuple)):
        raise SegaInputError("concepts", f"must be text or a list of concepts, got {describe_value(value)}")
    if len(value) > max_concepts:
        raise SegaInputError("concepts", f"has {len(value)} concepts; the limit is {max_concepts} (Settings → SEGA)")
    out = []
    for i, item in enumerate(value, start=1):
        name = f"concepts[{i}]"
        if isinstance(item, Concept):
            out.append(item)
        elif isinstance(item, str):
            parsed = parse_concepts(item, 1)
            if len(parsed.concepts) + len(parsed.errors) != 1:
                raise SegaInputError(name, "must be exactly one concept line")
            out.extend(parsed.raise_for_errors(name))
        elif isinstance(item, Mapping):
            out.append(concept_from_object(item, name))
        else:
            raise SegaInputError(name, f"must be an object or a concept line, got {describe_value(item)}")
    return tuple(out)


def concept_from_object(obj: Mapping[str, Any], name: str) -> Concept:
    values: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "text":
            key = "prompt"
        if key not in CONCEPT_OBJECT_KEYS:
            hint = did_you_mean(key, CONCEPT_OBJECT_KEYS)
            raise SegaInputError(f"{name}.{key}", f"is not a concept setting{hint}")
        if value is None:
            continue
        try:
            if key == "prompt":
                if not isinstance(value, str):
                    raise SegaInputError(key, f"must be text, got {describe_value(value)}")
                if "\n" in value or "\r" in value:
                    raise SegaInputError(key, "must be a single line")
                if not value.strip():
                    raise SegaInputError(key, "is empty")
                if len(value) > 2000:
                    raise SegaInputError(key, f"is {len(value)} characters long; the limit is 2000")
                values["text"], values["networks"] = split_networks(value)
                if not values["text"]:
                    raise SegaInputError(key, f"is empty once {', '.join(values['networks'])} is left out "
                                         "(extra networks apply to the whole model: put them in the prompt)")
            elif key == "reverse":
                values[key] = BY_NAME["enabled"].coerce(value)
            else:
                values[key] = BY_NAME[key].coerce(value)
        except SegaInputError as e:
            raise SegaInputError(f"{name}.{key}", e.problem) from None
    if "text" not in values:
        raise SegaInputError(f"{name}.prompt", "is missing")
    return Concept(**values)
