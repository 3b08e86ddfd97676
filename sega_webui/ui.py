"""The SEGA accordion (gradio 3.41, as pinned by WebUI 1.10). No WebUI imports: the
caller passes the defaults from the WebUI's settings."""

from __future__ import annotations

import html
import json
from typing import Any

import gradio as gr

from sega.concepts import DEFAULT_MAX_CONCEPTS
from sega.fields import BY_NAME, FIELDS
from sega.preview import render_preview

PLACEHOLDER = "smiling, smile\nglasses, wearing glasses :: scale=5 threshold=0.975\n-beard, full beard :: weight=0.5"
CONCEPTS_INFOTEXT = BY_NAME["concepts"].infotext


def tooltip(name: str) -> str:
    f = BY_NAME[name]
    return f"{f.help} ({f.symbol})" if f.symbol else f.help


def build(tab: str, defaults: dict[str, Any] | None = None, max_concepts: int = DEFAULT_MAX_CONCEPTS):
    """Builds the accordion inside the current gradio Blocks context.

    Returns (components in the args' order, infotext_fields, paste_field_names).
    """
    values = {f.name: f.default for f in FIELDS}
    values.update(defaults or {})
    ui_value = {f.name: f.format(values[f.name]) if f.kind.endswith("steps") else values[f.name] for f in FIELDS}
    c: dict[str, Any] = {}

    def eid(name):
        return f"sega_{tab}_{name}"

    def slider(name):
        f = BY_NAME[name]
        return gr.Slider(minimum=f.minimum, maximum=f.maximum, step=f.step, value=float(ui_value[name]),
                         label=f"{f.label} ({f.symbol})" if f.symbol else f.label, elem_id=eid(name))

    with gr.Accordion("SEGA — semantic guidance", open=False, elem_id=f"sega_{tab}", elem_classes=["sega-accordion"]):
        with gr.Row():
            c["enabled"] = gr.Checkbox(value=bool(ui_value["enabled"]), label=BY_NAME["enabled"].label, elem_id=eid("enabled"))
            c["hires"] = gr.Checkbox(value=bool(ui_value["hires"]), label=BY_NAME["hires"].label, elem_id=eid("hires"))
            c["show_maps"] = gr.Checkbox(value=bool(ui_value["show_maps"]), label=BY_NAME["show_maps"].label,
                                         elem_id=eid("show_maps"))
            # There is nothing to invert in txt2img; the component stays (hidden) so that
            # both tabs take the same positional args.
            c["invert"] = gr.Checkbox(value=bool(ui_value["invert"]), label=BY_NAME["invert"].label,
                                      elem_id=eid("invert"), visible=tab == "img2img")
        c["concepts"] = gr.Textbox(value=ui_value["concepts"], label=BY_NAME["concepts"].label, lines=3, max_lines=12,
                                   placeholder=PLACEHOLDER, elem_id=eid("concepts"))
        preview = gr.HTML(value=render_preview(ui_value["concepts"], values, max_concepts), elem_id=eid("preview"))
        with gr.Row():
            c["scale"] = slider("scale")
            c["threshold"] = slider("threshold")
            c["weight"] = slider("weight")
        with gr.Row():
            c["warmup"] = gr.Textbox(value=ui_value["warmup"], label=f"{BY_NAME['warmup'].label} (δ)", max_lines=1,
                                     placeholder="10 or 20%", elem_id=eid("warmup"))
            c["cooldown"] = gr.Textbox(value=ui_value["cooldown"], label=BY_NAME["cooldown"].label, max_lines=1,
                                       placeholder="never", elem_id=eid("cooldown"))
            c["momentum_scale"] = slider("momentum_scale")
            c["momentum_beta"] = slider("momentum_beta")
        c["mask"] = gr.Radio(choices=list(BY_NAME["mask"].choices), value=ui_value["mask"], label=BY_NAME["mask"].label,
                             elem_id=eid("mask"))
        tips = {f.name: tooltip(f.name) for f in FIELDS}
        gr.HTML(
            value=f'<script type="application/json" class="sega-tooltips" data-tab="{tab}">'
            f"{html.escape(json.dumps(tips, ensure_ascii=False), quote=False)}</script>",
            visible=False,
            elem_id=eid("tooltips"),
        )

    live_inputs = [c["concepts"], c["scale"], c["threshold"], c["warmup"], c["cooldown"], c["weight"]]

    def live(text, scale, threshold, warmup, cooldown, weight):
        return render_preview(text, dict(scale=scale, threshold=threshold, warmup=warmup, cooldown=cooldown,
                                         weight=weight), max_concepts)

    for component in live_inputs:
        component.change(fn=live, inputs=live_inputs, outputs=[preview], show_progress=False)

    components = [c[f.name] for f in FIELDS]
    return components, infotext_fields(components, tab), [f.infotext for f in FIELDS if f.infotext]


def infotext_fields(components, tab: str = "txt2img"):
    """Paste bindings. A pasted text without SEGA turns SEGA off; one with SEGA sets every
    field, to its built-in default where the text leaves it out (infotext is compact).
    Settings that are never written (showing the maps) are not pasted: they are the
    user's view, not part of how the image was made."""
    out = []
    for component, f in zip(components, FIELDS, strict=True):
        if f.infotext is None and f.name != "enabled":
            continue
        if f.name == "enabled":
            out.append((component, lambda d: CONCEPTS_INFOTEXT in d))
        elif f.name == "invert" and tab != "img2img":
            # Hidden there: never turned on unseen (None leaves it alone, as for the others).
            out.append((component, lambda d: False if CONCEPTS_INFOTEXT in d else None))
        else:
            out.append((component, _paste(f)))
    return out


def _paste(f):
    def value(d):
        if CONCEPTS_INFOTEXT not in d:
            return None
        raw = d.get(f.infotext)
        if raw is None:
            return f.format(f.default) if f.kind.endswith("steps") else f.default
        if f.kind == "bool":
            return str(raw).strip().lower() == "true"
        return raw

    return value
