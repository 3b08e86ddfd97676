"""The live view under the concepts box: each parsed concept with its effective settings
and direction, and each error with its line. Returns HTML (escaped user text)."""

from __future__ import annotations

import html
from typing import Any

from sega.args import SegaArgs
from sega.concepts import DEFAULT_MAX_CONCEPTS, network_note, parse_concepts
from sega.errors import SegaInputError
from sega.fields import BY_NAME, CONCEPT_KEYS

COLUMNS = {"scale": "scale", "threshold": "threshold", "warmup": "warm-up", "cooldown": "cooldown", "weight": "weight", "mask": "mask"}


def render_preview(text: str, defaults: dict[str, Any] | None = None, max_concepts: int = DEFAULT_MAX_CONCEPTS) -> str:
    """HTML for the concepts `text` with the accordion's current default settings."""
    text = text if isinstance(text, str) else ""
    problems: list[str] = []
    try:
        base = SegaArgs.from_named({k: v for k, v in (defaults or {}).items() if k in CONCEPT_KEYS})
    except SegaInputError as e:
        problems.append(f"{e.field}: {e.problem}")
        base = SegaArgs()
    result = parse_concepts(text, max_concepts)
    rows = []
    for i, (concept, line) in enumerate(zip(result.concepts, result.lines, strict=True), start=1):
        effective = base.effective(concept)
        overridden = concept.overrides()
        cells = []
        for key in COLUMNS:
            value = effective[key]
            shown = "never" if value is None else BY_NAME[key].format(value)
            cls = ' class="sega-overridden"' if key in overridden else ""
            cells.append(f"<td{cls}>{html.escape(shown)}</td>")
        direction = "away" if concept.reverse else "towards"
        arrow = "−" if concept.reverse else "+"
        rows.append(
            f'<tr class="sega-{direction}"><td>{i}</td><td title="line {line}">{arrow} {direction}</td>'
            f"<td>{html.escape(concept.text)}</td>{''.join(cells)}</tr>"
        )
    try:
        base.with_values(concepts=result.concepts).check_order()
    except SegaInputError as e:
        problems.append(f"{e.field}: {e.problem}")
    parts = []
    if rows:
        head = "".join(f"<th>{label}</th>" for label in COLUMNS.values())
        parts.append(
            '<table class="sega-concepts"><thead><tr><th>#</th><th>direction</th><th>concept</th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    elif not result.errors:
        parts.append('<p class="sega-empty">No concepts yet: one per line, a leading - steers away.</p>')
    notes = [f"concept {i}: {network_note(c)}" for i, c in enumerate(result.concepts, start=1) if c.networks]
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        parts.append(f'<ul class="sega-notes">{items}</ul>')
    errors = [str(e) for e in result.errors] + problems
    if errors:
        items = "".join(f"<li>{html.escape(e)}</li>" for e in errors)
        parts.append(f'<ul class="sega-errors">{items}</ul>')
    return f'<div class="sega-preview">{"".join(parts)}</div>'
