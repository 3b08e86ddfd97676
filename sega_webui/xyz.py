"""X/Y/Z plot axes for SEGA. An axis stores its value in `p.sega_overrides`, which the
script applies before it reads its args, so every cell is checked and written to infotext
like a normal generation."""

from __future__ import annotations

import re

from sega.args import SegaArgs
from sega.errors import SegaInputError
from sega.fields import BY_NAME, CONCEPT_KEYS

PREFIX = "[SEGA] "
OVERRIDES_ATTR = "sega_overrides"


def _set(p, key, value) -> None:
    # A new dict per cell: X/Y/Z shallow-copies p, so mutating would leak into other cells.
    setattr(p, OVERRIDES_ATTR, {**(getattr(p, OVERRIDES_ATTR, None) or {}), key: value})


def concepts_value(text: str) -> str:
    """An axis value holds one line per `\\n` (X/Y/Z values are one line of CSV)."""
    return text.replace("\\n", "\n")


def _check(overrides_for) -> callable:
    def confirm(p, values):
        for v in values:
            try:
                SegaArgs.from_values([True, "x"], overrides=overrides_for(v))
            except SegaInputError as e:
                # The concepts text and warm-up/cooldown order depend on the cell; those
                # are checked there (and shown under the image).
                if e.field != "concepts" and not re.fullmatch(r"concepts\[\d+\]", e.field):
                    raise RuntimeError(f"{PREFIX}{e}") from None

    return confirm


def axes(axis_option_cls, max_concepts: int, img2img_cls=None) -> list:
    """AxisOption objects for X/Y/Z (built with the WebUI's own AxisOption class; an
    img2img-only setting with its AxisOptionImg2Img, which the plot lists in img2img only)."""
    out = []

    def add(label, type_, key, confirm=True, choices=None, apply=None, fmt=None, cls=None):
        def default_apply(p, x, xs):
            _set(p, key, x)

        kwargs = {}
        if choices is not None:
            kwargs["choices"] = choices
        if fmt is not None:
            kwargs["format_value"] = fmt
        out.append(
            (cls or axis_option_cls)(
                PREFIX + label,
                type_,
                apply or default_apply,
                confirm=_check(lambda v: {key: v}) if confirm else None,
                **kwargs,
            )
        )

    add("Enabled", str, "enabled", choices=lambda: ["True", "False"])
    add("Concepts", concepts_value, "concepts", confirm=False)

    def apply_sr(p, x, xs):
        search = xs[0]
        _set(p, "concepts_sr", (search, x))

    add("Concepts S/R", concepts_value, "concepts_sr", confirm=False, apply=apply_sr,
        fmt=lambda p, opt, x: x)
    for name in ("scale", "threshold", "warmup", "cooldown", "weight", "momentum_scale", "momentum_beta"):
        f = BY_NAME[name]
        add(f.label, float if f.kind == "float" else str, name)
    add(BY_NAME["hires"].label, str, "hires", choices=lambda: ["True", "False"])
    add(BY_NAME["invert"].label, str, "invert", choices=lambda: ["True", "False"], cls=img2img_cls)
    add(BY_NAME["mask"].label, str, "mask", choices=lambda: list(BY_NAME["mask"].choices))
    for k in range(1, max_concepts + 1):
        for key in CONCEPT_KEYS:
            f = BY_NAME[key]
            type_ = float if f.kind == "float" else str
            extra = {"choices": lambda f=f: list(f.choices)} if f.choices else {}
            out.append(
                axis_option_cls(
                    f"{PREFIX}Concept {k} {f.label.lower()}",
                    type_,
                    _concept_apply(k, key),
                    confirm=_check(lambda v, key=key: {("concept", 1, key): v}),
                    **extra,
                )
            )
    return out


def _concept_apply(k, key):
    def apply(p, x, xs):
        _set(p, ("concept", k, key), x)

    return apply
