"""Settings → generation parameters → PNG Info / paste / API infotext → the same settings."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")

import webui  # noqa: E402

from sega.args import SegaArgs  # noqa: E402
from sega.concepts import Concept  # noqa: E402
from sega.steps import Steps  # noqa: E402
from sega_webui import ui  # noqa: E402

webui.load()
from modules import infotext_utils  # noqa: E402

with gr.Blocks():
    COMPONENTS, PASTE, _ = ui.build("txt2img")
with gr.Blocks():
    COMPONENTS_IMG2IMG, PASTE_IMG2IMG, _ = ui.build("img2img")


def paste(params, fields=PASTE):
    """What the WebUI's paste does with our infotext_fields (infotext_utils.connect_paste):
    None leaves a field alone; other values are cast to the component's value type. A
    component without a paste binding keeps its value."""
    components = COMPONENTS if fields is PASTE else COMPONENTS_IMG2IMG
    bound = {id(c): fn for c, fn in fields}
    values = []
    for component in components:
        fn = bound.get(id(component), lambda _: None)
        v = fn(params)
        if v is None:
            values.append(component.value)
            continue
        kind = type(component.value)
        values.append(False if kind is bool and v == "False" else kind(v))
    return values


def round_trip(args: SegaArgs, fields=PASTE) -> SegaArgs:
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, **args.to_infotext()}
    text = infotext_utils.create_infotext("a photo, of a face", "blurry", params)
    parsed = infotext_utils.parse_generation_parameters(text)
    assert parsed["Prompt"] == "a photo, of a face"
    return SegaArgs.from_values(paste(parsed, fields))


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")) | st.sampled_from(list(',:"\\')),
    min_size=1, max_size=25,
).map(str.strip).filter(bool)
_steps = st.integers(0, 40).map(lambda n: Steps(float(n))) | st.floats(0, 50, allow_nan=False).map(lambda v: Steps(v, True))
_concept = st.builds(
    Concept,
    text=_text | st.sampled_from(["smiling, smile", "a: b", 'say "hi"', "(x:1.2), [a:b:5]", "-x", "#y"]),
    reverse=st.booleans(),
    scale=st.none() | st.floats(0, 30, allow_nan=False),
    threshold=st.none() | st.floats(0, 1, allow_nan=False),
    weight=st.none() | st.floats(0, 10, allow_nan=False),
    mask=st.none() | st.sampled_from(["threshold", "attention", "intersect"]),
)


@st.composite
def sega_args(draw):
    args = SegaArgs(
        enabled=True,
        concepts=tuple(draw(st.lists(_concept, min_size=1, max_size=8))),
        scale=draw(st.floats(0, 30, allow_nan=False)),
        threshold=draw(st.floats(0, 1, allow_nan=False)),
        warmup=draw(_steps),
        cooldown=draw(st.none() | st.integers(41, 200).map(lambda n: Steps(float(n)))),
        weight=draw(st.floats(0, 10, allow_nan=False)),
        momentum_scale=draw(st.floats(0, 2, allow_nan=False)),
        momentum_beta=draw(st.floats(0, 1, allow_nan=False)),
        hires=draw(st.booleans()),
        mask=draw(st.sampled_from(["threshold", "attention", "intersect"])),
    )
    args.check_order()
    return args


@settings(max_examples=150, deadline=None)
@given(sega_args())
def test_infotext_paste_restores_every_setting(args):
    assert round_trip(args) == args


def test_concept_text_with_commas_colons_quotes_and_newlines_survives():
    args = SegaArgs.from_named({
        "enabled": True,
        "concepts": 'smiling, smile\n-glasses: "round" :: scale=3, weight=0.5\nhat\\n, BREAK',
        "threshold": 0.9,
    })
    assert round_trip(args) == args


def test_pasting_a_text_without_sega_turns_it_off():
    parsed = infotext_utils.parse_generation_parameters("a face\nSteps: 20, Sampler: Euler, CFG scale: 7")
    assert SegaArgs.from_values(paste(parsed)).active is False


@pytest.mark.parametrize("concepts", ["smile\n-glasses", ""])
def test_invert_survives_the_round_trip_in_img2img_and_is_not_set_in_txt2img(concepts):
    args = SegaArgs.from_named({"enabled": True, "concepts": concepts, "invert": True})
    assert args.active and args.to_infotext()["SEGA invert"] == "True"
    assert round_trip(args, PASTE_IMG2IMG) == args
    pasted = round_trip(args)  # txt2img: the hidden option is never turned on
    assert pasted == args.with_values(invert=False) and pasted.active == bool(concepts)
    off = args.with_values(invert=False)
    assert "SEGA invert" not in off.to_infotext()
