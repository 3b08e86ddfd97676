"""Errors that name the field (or concept line) and the problem, for users to read."""

from __future__ import annotations


class SegaInputError(ValueError):
    """Bad user input. `field` is the setting's API name; `problem` says what is wrong."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"SEGA {field}: {problem}")

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem, "message": str(self)}


def did_you_mean(key: str, options) -> str:
    """' — did you mean 'x'?' for the closest option, or the list of options."""
    options = list(options)
    lowered = str(key).lower()
    prefixed = [o for o in options if o.startswith(lowered)] if lowered else []
    if prefixed:
        return f" — did you mean '{prefixed[0]}'?"
    import difflib

    close = difflib.get_close_matches(lowered, options, n=1, cutoff=0.5)
    if close:
        return f" — did you mean '{close[0]}'?"
    return f" (known: {', '.join(options)})"
