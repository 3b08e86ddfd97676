"""The accordion, built with the gradio the WebUI pins (3.41.2)."""

from __future__ import annotations

import json
import os
import re

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")

from sega.fields import FIELDS  # noqa: E402
from sega_webui import ui  # noqa: E402


@pytest.fixture(scope="module")
def built():
    with gr.Blocks() as demo:
        components, infotext_fields, paste_names = ui.build("txt2img", {"scale": 6.5, "warmup": ui.BY_NAME["warmup"].coerce("3")})
    return demo, components, infotext_fields, paste_names


def test_gradio_is_the_webui_version():
    assert gr.__version__ == "3.41.2"


def test_components_follow_the_args_order_with_stable_ids(built):
    demo, components, _, _ = built
    assert [c.elem_id for c in components] == [f"sega_txt2img_{f.name}" for f in FIELDS]
    kinds = {f.name: type(c).__name__ for c, f in zip(components, FIELDS, strict=True)}
    expected = {"bool": "Checkbox", "text": "Textbox", "float": "Slider", "steps": "Textbox", "optional_steps": "Textbox",
                "choice": "Radio"}
    assert kinds == {f.name: expected[f.kind] for f in FIELDS}
    choices = components[[f.name for f in FIELDS].index("mask")].choices  # gradio keeps (label, value) pairs
    assert [value for _, value in choices] == ["threshold", "attention", "intersect"]
    for c, f in zip(components, FIELDS, strict=True):
        assert c.label and f.label in c.label  # /sdapi/v1/script-info shows these labels
        if f.kind == "float":
            assert (c.minimum, c.maximum, c.step) == (f.minimum, f.maximum, f.step)


def test_defaults_come_from_settings_or_the_table(built):
    _, components, _, _ = built
    values = {f.name: c.value for c, f in zip(components, FIELDS, strict=True)}
    assert values == {
        "enabled": False, "concepts": "", "scale": 6.5, "threshold": 0.95, "warmup": "3", "cooldown": "",
        "weight": 1.0, "momentum_scale": 0.3, "momentum_beta": 0.6, "hires": True, "show_maps": False,
        "invert": False,
        "mask": "threshold",
    }


def test_invert_is_shown_in_img2img_only_and_pasted_there_only():
    from sega_webui.ui import CONCEPTS_INFOTEXT

    pasted = {CONCEPTS_INFOTEXT: "smile", "SEGA invert": "True"}
    for tab, visible in (("txt2img", False), ("img2img", True)):
        with gr.Blocks():
            components, fields, _ = ui.build(tab)
        invert = components[[f.name for f in FIELDS].index("invert")]
        assert invert.visible is visible and invert.elem_id == f"sega_{tab}_invert"
        paste = dict((id(c), fn) for c, fn in fields if callable(fn))[id(invert)]
        assert paste(pasted) is visible


def test_accordion_is_collapsed_and_has_a_placeholder(built):
    demo, components, _, _ = built
    accordion = [b for b in demo.blocks.values() if isinstance(b, gr.Accordion)]
    assert len(accordion) == 1 and accordion[0].open is False and accordion[0].elem_id == "sega_txt2img"
    assert components[1].placeholder.startswith("smiling, smile\n")


def _live_fn(demo):
    preview = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sega_txt2img_preview")
    deps = [d for d in demo.dependencies if d["outputs"] == [preview._id]]
    assert len(deps) == 6  # concepts and the five default settings all refresh the view
    return demo.fns[demo.dependencies.index(deps[0])].fn


def test_live_view_shows_concepts_and_errors(built):
    demo, *_ = built
    live = _live_fn(demo)
    out = live("smile\n-glasses :: scale=3\n# c\nhat :: scle=1", 5.0, 0.9, "20%", "", 1.0)
    rows = re.findall(r"<tr class=\"sega-(towards|away)\">(.*?)</tr>", out)
    assert [r[0] for r in rows] == ["towards", "away"]
    assert "<td>glasses</td><td class=\"sega-overridden\">3</td><td>0.9</td><td>20%</td><td>never</td><td>1</td>" in out
    assert "line 4 (hat :: scle=1): unknown key &#x27;scle&#x27; — did you mean &#x27;scale&#x27;?" in out
    assert "No concepts yet" in live("", 5.0, 0.9, "20%", "", 1.0)
    bad_default = live("smile", 5.0, 0.9, "ten", "", 1.0)
    assert "warmup: expected a step count like 10 or a share like 20%, got &#x27;ten&#x27;" in bad_default
    assert "&lt;script&gt;" in live("<script>alert(1)</script>", 5.0, 0.9, "20%", "", 1.0)


def test_tooltips_come_from_the_settings_table(built):
    demo, *_ = built
    holder = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sega_txt2img_tooltips")
    payload = re.search(r">(.*)</script>", holder.value, re.S).group(1)
    tips = json.loads(payload.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert set(tips) == {f.name for f in FIELDS}
    assert tips["threshold"].endswith("(λ)") and tips["scale"].endswith("(s_e)")
    with open(os.path.join(os.path.dirname(__file__), "..", "javascript", "sega.js"), encoding="utf-8") as f:
        js = f.read()
    assert "sega-tooltips" in js and "onUiLoaded" in js


def test_paste_restores_every_field_and_turns_sega_off_without_it(built):
    _, components, infotext_fields, paste_names = built
    assert set(paste_names) == {f.infotext for f in FIELDS if f.infotext}
    # Showing the maps changes no image: it is neither written nor pasted.
    assert "sega_txt2img_show_maps" not in {c.elem_id for c, _ in infotext_fields}
    params = {"SEGA concepts": "smile", "SEGA threshold": "0.9"}
    pasted = {c.elem_id: fn(params) for c, fn in infotext_fields}
    assert pasted["sega_txt2img_enabled"] is True
    assert pasted["sega_txt2img_threshold"] == "0.9"
    assert pasted["sega_txt2img_scale"] == 5.0  # left out of the infotext → built-in default
    assert pasted["sega_txt2img_warmup"] == "20%"
    off = {c.elem_id: fn({"Steps": "20"}) for c, fn in infotext_fields}
    assert off["sega_txt2img_enabled"] is False
    assert all(v is None for k, v in off.items() if k != "sega_txt2img_enabled")


def test_img2img_accordion_is_the_same_with_its_own_ids():
    with gr.Blocks() as demo:
        components, infotext_fields, paste_names = ui.build("img2img", {"scale": 6.5})
    assert [c.elem_id for c in components] == [f"sega_img2img_{f.name}" for f in FIELDS]
    assert components[2].value == 6.5
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"sega_img2img", "sega_img2img_preview", "sega_img2img_tooltips"} <= ids
    assert not any(i and i.startswith("sega_txt2img") for i in ids)
    holder = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sega_img2img_tooltips")
    assert 'data-tab="img2img"' in holder.value
    pasted = {c.elem_id: fn({"SEGA concepts": "smile", "SEGA scale": "7"}) for c, fn in infotext_fields}
    assert pasted["sega_img2img_enabled"] is True and pasted["sega_img2img_scale"] == "7"
    assert set(paste_names) == {f.infotext for f in FIELDS if f.infotext}


def test_the_script_shows_in_both_tabs():
    import webui

    w = webui.load()
    script = w.script_module.SegaScript()
    assert script.show(False) is w.scripts.AlwaysVisible and script.show(True) is w.scripts.AlwaysVisible
