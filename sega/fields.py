"""The table of every user-facing SEGA setting: one row each, read by the concept
language, the args model, the UI, infotext, the API and the X/Y/Z axes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sega.errors import SegaInputError
from sega.steps import Steps, format_number, parse_steps

MAX_TEXT_LENGTH = 20000  # concepts box, characters
MASKS = ("threshold", "attention", "intersect")  # see sega/masks.py


@dataclass(frozen=True)
class Field:
    name: str  # API name and the name in the args model
    kind: str  # "bool" | "float" | "steps" | "optional_steps" | "text" | "choice"
    default: Any
    label: str
    infotext: str | None  # key in the generation parameters, None if not written
    symbol: str = ""  # the paper's symbol
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    per_concept: bool = False  # may be overridden on a concept line
    choices: tuple[str, ...] = ()  # the values of a "choice" field

    def coerce(self, value: Any) -> Any:
        """The typed value for `value` as it arrives from the UI, JSON or infotext."""
        kind = self.kind
        if kind == "bool":
            return _coerce_bool(self.name, value)
        if kind == "float":
            return self._coerce_float(value)
        if kind in ("steps", "optional_steps"):
            return self._coerce_steps(value)
        if kind == "choice":
            return self._coerce_choice(value)
        if kind == "text":
            if value is None:
                return ""
            if not isinstance(value, str):
                raise SegaInputError(self.name, f"must be text, got {describe_value(value)}")
            if len(value) > MAX_TEXT_LENGTH:
                raise SegaInputError(
                    self.name, f"is {len(value)} characters long; the limit is {MAX_TEXT_LENGTH}"
                )
            return value
        raise AssertionError(kind)

    def _coerce_choice(self, value: Any) -> str:
        expected = ", ".join(self.choices)
        if not isinstance(value, str):
            raise SegaInputError(self.name, f"must be one of {expected}, got {describe_value(value)}")
        choice = value.strip().lower()
        if choice not in self.choices:
            raise SegaInputError(self.name, f"must be one of {expected}, got {_short(value)!r}")
        return choice

    def _coerce_float(self, value: Any) -> float:
        if isinstance(value, bool) or value is None:
            raise SegaInputError(self.name, f"must be a number, got {describe_value(value)}")
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise SegaInputError(self.name, f"must be a number, got {_short(value)!r}") from None
        elif isinstance(value, (int, float)):
            number = float(value)
        else:
            raise SegaInputError(self.name, f"must be a number, got {describe_value(value)}")
        if not math.isfinite(number):
            raise SegaInputError(self.name, f"must be a finite number, got {format_number_safe(number)}")
        if number < 0 <= self.minimum:
            raise SegaInputError(self.name, f"cannot be negative, got {format_number(number)}")
        if not self.minimum <= number <= self.maximum:
            raise SegaInputError(
                self.name,
                f"must be between {format_number(self.minimum)} and {format_number(self.maximum)}, "
                f"got {format_number(number)}",
            )
        return number

    def _coerce_steps(self, value: Any) -> Steps | None:
        if isinstance(value, Steps):
            return value
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "never")):
            if self.kind == "optional_steps":
                return None
            raise SegaInputError(self.name, "needs a step count like 10 or a share like 20%")
        if isinstance(value, bool):
            raise SegaInputError(self.name, f"must be a step count or a share like 20%, got {describe_value(value)}")
        if isinstance(value, (int, float)):
            value = format_number_safe(float(value))
        if not isinstance(value, str):
            raise SegaInputError(self.name, f"must be a step count or a share like 20%, got {describe_value(value)}")
        try:
            steps = parse_steps(value)
        except ValueError as e:
            raise SegaInputError(self.name, str(e)) from None
        if self.kind == "optional_steps" and steps.value == 0:
            raise SegaInputError(self.name, "must be after step 0 (leave it empty for no cooldown)")
        return steps

    def format(self, value: Any) -> str:
        """Text for infotext and concept lines that `coerce` reads back to `value`."""
        if self.kind == "bool":
            return "True" if value else "False"
        if self.kind == "float":
            return format_number(value)
        if self.kind in ("steps", "optional_steps"):
            return "" if value is None else str(value)
        return value


def format_number_safe(value: float) -> str:
    return format_number(value) if math.isfinite(value) else repr(value)


def _coerce_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise SegaInputError(name, f"must be true or false, got {_short(value)!r}")


def describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the text {_short(value)!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


FIELDS: tuple[Field, ...] = (
    Field("enabled", "bool", False, "Enable SEGA", None,
          help="Steer the image towards or away from the concepts below."),
    Field("concepts", "text", "", "Concepts", "SEGA concepts",
          help="One concept per line; -concept steers away; :: key=value overrides."),
    Field("scale", "float", 5.0, "Edit scale", "SEGA scale", "s_e",
          "How strongly each concept pulls the image.", 0.0, 30.0, 0.1, per_concept=True),
    Field("threshold", "float", 0.95, "Threshold", "SEGA threshold", "λ",
          "Share of the latent left untouched: 0.95 edits the strongest 5 %.", 0.0, 1.0, 0.005,
          per_concept=True),
    Field("warmup", "steps", Steps(20.0, True), "Warm-up", "SEGA warmup", "δ",
          "Steps (10) or share of steps (20%) before a concept is applied.", per_concept=True),
    Field("cooldown", "optional_steps", None, "Cooldown", "SEGA cooldown", "",
          "Step (or share) from which a concept stops; empty: never.", per_concept=True),
    Field("weight", "float", 1.0, "Weight", "SEGA weight", "g_i",
          "A concept's weight against the others.", 0.0, 10.0, 0.05, per_concept=True),
    Field("momentum_scale", "float", 0.3, "Momentum scale", "SEGA momentum", "s_m",
          "How much accumulated guidance is added each step.", 0.0, 2.0, 0.01),
    Field("momentum_beta", "float", 0.6, "Momentum beta", "SEGA momentum beta", "β_m",
          "How slowly the momentum forgets earlier steps.", 0.0, 1.0, 0.01),
    Field("hires", "bool", True, "Apply in hires. fix pass", "SEGA hires",
          help="Also steer the hires. fix pass."),
    # Last, so that positional API args written before it keep their positions. It changes
    # no image, so it is not written to the infotext.
    Field("show_maps", "bool", False, "Show where concepts act", None,
          help="After the images, a map per image and concept of where SEGA changed the latent."),
    # img2img only. After show_maps, so that positional args written before it keep theirs.
    Field("invert", "bool", False, "Edit the input image (inversion)", "SEGA invert",
          help="img2img: first find the noise with which the sampler remakes this image exactly, so that only "
               "what the concepts name changes. Needs a sampler that adds noise (Euler a, DPM++ 2M SDE, …); "
               "works even with no concepts (then it remakes the image)."),
    # Appended after show_maps so that the positional API args before it keep their places.
    Field("mask", "choice", "threshold", "Mask", "SEGA mask", "",
          "Where a concept may act: threshold (SEGA: its strongest share per channel), attention "
          "(where the model attends to its words, LEDITS++ M¹) or intersect (both, LEDITS++).",
          per_concept=True, choices=MASKS),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
CONCEPT_KEYS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.per_concept)
