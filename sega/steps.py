"""Step counts that are either absolute ("10") or a share of the pass's steps ("20%")."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Steps:
    value: float
    percent: bool = False

    def resolve(self, total_steps: int) -> int:
        """The step index this stands for in a pass of `total_steps` sampler steps.

        Percentages round half up, so 20% of 25 steps is step 5 and 50% of 25 is 13.
        """
        if not self.percent:
            return int(self.value)
        return int(math.floor(self.value * total_steps / 100.0 + 0.5))

    def __str__(self) -> str:
        return format_number(self.value) + ("%" if self.percent else "")


def format_number(value: float) -> str:
    """Shortest text that parses back to exactly `value` ("5", "0.975", "1e-05")."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def parse_steps(text: str) -> Steps:
    """"10" → 10 steps, "20%" → 20 % of the pass. Raises ValueError with a user message."""
    raw = text.strip()
    percent = raw.endswith("%")
    number = raw[:-1].strip() if percent else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a step count like 10 or a share like 20%, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    if percent:
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"a share of the steps must be between 0% and 100%, got {text!r}")
        return Steps(value, True)
    if not value.is_integer():
        raise ValueError(f"a step count must be a whole number (or a share like 20%), got {text!r}")
    if value < 0:
        raise ValueError(f"a step count cannot be negative, got {text!r}")
    if value > 10000:
        raise ValueError(f"a step count must be at most 10000, got {text!r}")
    return Steps(float(value), False)
