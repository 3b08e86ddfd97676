"""The concept language: what users type in the concepts box and what infotext stores.

    smiling, smile
    # a comment line
    glasses, wearing glasses :: scale=5 threshold=0.975 mask=intersect
    -beard, full beard :: scale=5.4 warmup=20% cooldown=80% weight=0.5

One concept per line. A leading `-` steers away from the concept, a leading `+` (optional)
towards it. The concept text is an ordinary WebUI prompt and is passed on untouched. The
last `::` on a line starts `key=value` overrides (separated by spaces or commas) when what
follows it can only be overrides; otherwise it belongs to the prompt (as in `[cat::10]`).

Extra-network tags (`<lora:name:1>`, `<hypernet:name>`) change the whole model, not one
concept's text, so they are taken out of the concept's text and kept on the side
(`Concept.networks`) for the live view and the generation's comment to mention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sega.errors import SegaInputError, did_you_mean
from sega.fields import BY_NAME, CONCEPT_KEYS
from sega.steps import Steps

DEFAULT_MAX_CONCEPTS = 8
SEPARATOR = "::"
_OVERRIDES_ONLY = re.compile(r"^[\w\s.,=%+\-]*$")
_LINE_BREAKS = re.compile(r"\r\n|\r")
# The WebUI's extra-network syntax: <kind:arguments>.
_NETWORK_TAG = re.compile(r"<(\w+):([^<>]+)>")


@dataclass(frozen=True)
class Concept:
    """One concept line. A setting left as None takes the generation's default."""

    text: str
    reverse: bool = False
    scale: float | None = None
    threshold: float | None = None
    warmup: Steps | None = None
    cooldown: Steps | None = None
    weight: float | None = None
    mask: str | None = None
    # Extra-network tags taken out of the text; they never reach the model with the concept.
    networks: tuple[str, ...] = field(default=(), compare=False)

    def overrides(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in CONCEPT_KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class ConceptError:
    line: int  # 1-based
    text: str
    problem: str

    def __str__(self) -> str:
        shown = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        return f"line {self.line} ({shown}): {self.problem}"


@dataclass(frozen=True)
class ParseResult:
    concepts: tuple[Concept, ...] = ()
    errors: tuple[ConceptError, ...] = ()
    lines: tuple[int, ...] = field(default=(), compare=False)  # line of each concept

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self, field_name: str = "concepts") -> tuple[Concept, ...]:
        if self.errors:
            raise SegaInputError(field_name, "; ".join(str(e) for e in self.errors))
        return self.concepts


def parse_concepts(text: str, max_concepts: int = DEFAULT_MAX_CONCEPTS) -> ParseResult:
    """Every concept of `text`, and every error with its line."""
    concepts: list[Concept] = []
    errors: list[ConceptError] = []
    lines: list[int] = []
    numbered = [(number, line.strip()) for number, line in enumerate(_LINE_BREAKS.sub("\n", text).split("\n"), start=1)
                if line.strip() and not line.strip().startswith("#")]
    for number, stripped in numbered:
        try:
            concept = parse_line(stripped)
        except ValueError as e:
            errors.append(ConceptError(number, stripped, str(e)))
            continue
        if len(concepts) == max_concepts:
            # Once, at the first line over the limit: a long paste must not make a message per line.
            if not any(e.problem.startswith("too many concepts") for e in errors):
                errors.append(ConceptError(
                    number, stripped,
                    f"too many concepts: {len(numbered)} given, the limit is {max_concepts} (Settings → SEGA)"))
            continue
        concepts.append(concept)
        lines.append(number)
    return ParseResult(tuple(concepts), tuple(errors), tuple(lines))


def parse_line(line: str) -> Concept:
    """One non-empty, non-comment line. Raises ValueError with the problem."""
    reverse = False
    body = line.strip()
    if body[:1] in ("-", "+"):
        reverse = body[0] == "-"
        body = body[1:]
    overrides: dict[str, object] = {}
    cut = body.rfind(SEPARATOR)
    if cut >= 0 and _OVERRIDES_ONLY.match(body[cut + len(SEPARATOR) :]):
        overrides = parse_overrides(body[cut + len(SEPARATOR) :])
        body = body[:cut]
    body, networks = split_networks(body)
    if not body:
        if networks:
            raise ValueError(
                f"the concept text is empty once {', '.join(networks)} is left out "
                "(extra networks apply to the whole model: put them in the prompt)"
            )
        raise ValueError("the concept text is empty")
    warmup, cooldown = overrides.get("warmup"), overrides.get("cooldown")
    if (
        isinstance(warmup, Steps)
        and isinstance(cooldown, Steps)
        and warmup.percent == cooldown.percent
        and cooldown.value <= warmup.value
    ):
        raise ValueError(f"cooldown ({cooldown}) must come after warmup ({warmup})")
    return Concept(body, reverse, **overrides, networks=networks)


def split_networks(text: str) -> tuple[str, tuple[str, ...]]:
    """`text` without its extra-network tags (spaces tidied), and the tags."""
    tags = tuple(m.group(0) for m in _NETWORK_TAG.finditer(text))
    if not tags:
        return text.strip(), ()
    rest = _NETWORK_TAG.sub(" ", text)
    rest = re.sub(r"\s+,", ",", re.sub(r"\s{2,}", " ", rest))
    return rest.strip(" ,"), tags


def network_note(concept: Concept) -> str:
    """What a user reads about the tags left out of `concept` (empty when none)."""
    if not concept.networks:
        return ""
    return (
        f"{', '.join(concept.networks)} left out of concept '{concept.text}': extra networks apply "
        "to the whole model, not to one concept (put them in the prompt)"
    )


def parse_overrides(text: str) -> dict[str, object]:
    result: dict[str, object] = {}
    for token in re.split(r"[\s,]+", re.sub(r"\s*=\s*", "=", text.strip())):
        if not token:
            continue
        key, eq, value = token.partition("=")
        key = key.lower()
        if not eq:
            raise ValueError(f"expected key=value after '::', got {token!r}")
        if key not in CONCEPT_KEYS:
            raise ValueError(f"unknown key '{key}'{did_you_mean(key, CONCEPT_KEYS)}")
        if key in result:
            raise ValueError(f"'{key}' is given twice")
        if not value:
            raise ValueError(f"'{key}' needs a value")
        try:
            result[key] = BY_NAME[key].coerce(value)
        except SegaInputError as e:
            raise ValueError(f"{key} {e.problem}") from None
        if key == "cooldown" and result[key] is None:
            del result[key]
    return result


def format_concept(concept: Concept) -> str:
    """The canonical line for `concept`; `parse_line(format_concept(c)) == c`."""
    text = concept.text
    if concept.reverse:
        sign = "-"
    elif text[:1] in ("-", "+", "#", '"'):
        # '"' too: the WebUI's infotext reader unquotes any value that starts with a quote.
        sign = "+"
    else:
        sign = ""
    parts = [f"{k}={BY_NAME[k].format(v)}" for k, v in concept.overrides().items()]
    suffix = ""
    if parts:
        suffix = f" {SEPARATOR} " + " ".join(parts)
    elif SEPARATOR in text:
        # An empty override list keeps a '::' in the prompt from being read as one.
        suffix = f" {SEPARATOR}"
    return sign + text + suffix


def format_concepts(concepts) -> str:
    return "\n".join(format_concept(c) for c in concepts)
