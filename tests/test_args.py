import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sega.args import SegaArgs
from sega.concepts import Concept, parse_concepts
from sega.errors import SegaInputError
from sega.fields import FIELDS
from sega.steps import Steps

UI_DEFAULTS = [f.format(f.default) if f.kind.endswith("steps") else f.default for f in FIELDS]


def test_defaults_are_the_documented_ones():
    a = SegaArgs()
    assert (a.scale, a.threshold, a.warmup, a.cooldown, a.weight) == (5.0, 0.95, Steps(20.0, True), None, 1.0)
    assert (a.momentum_scale, a.momentum_beta, a.hires, a.enabled) == (0.3, 0.6, True, False)
    assert SegaArgs.from_values(UI_DEFAULTS) == a
    assert a.ui_values() == UI_DEFAULTS


def test_ui_positional_values():
    values = [True, "smile\n-glasses :: scale=3", 6.0, 0.9, "3", "80%", 1.5, 0.0, 0.5, False]
    a = SegaArgs.from_values(values)
    assert a.active
    assert a.concepts == (Concept("smile"), Concept("glasses", reverse=True, scale=3.0))
    assert (a.scale, a.threshold, a.warmup, a.cooldown, a.weight) == (6.0, 0.9, Steps(3.0), Steps(80.0, True), 1.5)
    assert (a.momentum_scale, a.momentum_beta, a.hires) == (0.0, 0.5, False)
    # Ten values, as clients sent them before the maps option: it takes its default.
    assert a.ui_values() == [True, "smile\n-glasses :: scale=3", 6.0, 0.9, "3", "80%", 1.5, 0.0, 0.5, False,
                             *UI_DEFAULTS[len(values):]]


def test_invert_is_the_position_after_show_maps_and_written_only_when_on():
    names = [f.name for f in FIELDS]
    assert names.index("invert") == names.index("show_maps") + 1 == 11
    assert names.index("mask") == 12  # the masks came after inversion
    on = SegaArgs.from_values([True, "smile", *UI_DEFAULTS[2:11], True])
    assert on.invert and SegaArgs.from_values(on.ui_values()) == on
    assert on.to_infotext()["SEGA invert"] == "True"
    assert SegaArgs.from_infotext(on.to_infotext()).invert
    off = on.with_values(invert=False)
    assert "SEGA invert" not in off.to_infotext()
    # An edit with no concepts still remakes the photo: it is a run of its own.
    assert SegaArgs.from_values([True, "", *UI_DEFAULTS[2:11], True]).active
    assert not SegaArgs.from_values([True, "", *UI_DEFAULTS[2:11], False]).active
    assert SegaArgs.from_named({"invert": "true", "concepts": ""}).invert
    with pytest.raises(SegaInputError, match="invert"):
        SegaArgs.from_named({"invert": "yes please"})


def test_show_maps_comes_after_the_first_ten_positions_and_is_never_written():
    names = [f.name for f in FIELDS]
    a = SegaArgs.from_values([True, "smile", *UI_DEFAULTS[2:names.index("show_maps")], True])
    assert names.index("show_maps") == 10 and a.show_maps and a.active
    assert SegaArgs.from_values(a.ui_values()) == a
    assert "show" not in " ".join(a.to_infotext()).lower()
    assert SegaArgs.from_infotext(a.to_infotext()) == a.with_values(enabled=True, show_maps=False)
    assert SegaArgs.from_values([{"concepts": "smile", "show_maps": True}]).show_maps
    assert a.guidance(10).maps is not None and a.with_values(show_maps=False).guidance(10).maps is None


def test_api_named_object_in_first_position():
    payload = {
        "enabled": True,
        "concepts": [{"prompt": "glasses", "scale": 5, "threshold": 0.975}, {"prompt": "beard", "reverse": True}],
        "momentum_scale": 0.3,
        "warmup": 4,
    }
    a = SegaArgs.from_values([payload, *UI_DEFAULTS[1:]])
    assert a.concepts == (Concept("glasses", scale=5.0, threshold=0.975), Concept("beard", reverse=True))
    assert a.warmup == Steps(4.0)
    assert SegaArgs.from_values([{"enabled": True, "concepts": "glasses\n-beard"}]).concepts == (
        Concept("glasses"),
        Concept("beard", reverse=True),
    )
    assert SegaArgs.from_values([{"concepts": ["glasses :: weight=2", "-beard"]}]).concepts == (
        Concept("glasses", weight=2.0),
        Concept("beard", reverse=True),
    )


def test_api_object_takes_missing_settings_from_the_ui_defaults_and_is_on():
    ui_defaults = [False, "", 6.5, 0.9, "3", "", 1.0, 0.3, 0.6, False]  # Settings changed some
    a = SegaArgs.from_values([{"concepts": "smile", "threshold": 0.975}, *ui_defaults[1:]])
    assert a.enabled and a.concepts == (Concept("smile"),)
    assert (a.scale, a.threshold, a.warmup, a.hires) == (6.5, 0.975, Steps(3.0), False)
    assert not SegaArgs.from_values([{"enabled": False, "concepts": "smile"}]).active


def test_disabled_or_empty_is_inactive():
    assert not SegaArgs.from_values([False, "smile"]).active
    assert not SegaArgs.from_values([True, "  \n# only a comment\n"]).active
    assert SegaArgs.from_values([True, "smile"]).to_infotext() == {"SEGA concepts": "smile"}
    assert SegaArgs.from_values([False, "smile"]).to_infotext() == {}


@pytest.mark.parametrize(
    "values, message",
    [
        ([True, "x", 5.0, 7], "SEGA threshold: must be between 0 and 1, got 7"),
        ([True, "x", math.nan], "SEGA scale: must be a finite number, got nan"),
        ([True, "x", "five"], "SEGA scale: must be a number, got 'five'"),
        ([True, ["x"], 5.0, [0.9]], "SEGA threshold: must be a number, got a list"),
        (["yes", "x"], "SEGA enabled: must be true or false, got 'yes'"),
        ([True, "x", 5.0, 0.9, "ten"], "SEGA warmup: expected a step count like 10 or a share like 20%, got 'ten'"),
        ([True, "x", 5.0, 0.9, "5", "5"], "SEGA concepts[1]: cooldown (5) must come after warmup (5) for 'x'"),
        ([True, "x :: scle=2"], "SEGA concepts: line 1 (x :: scle=2): unknown key 'scle' — did you mean 'scale'?"),
        ([True, 5], "SEGA concepts: must be text or a list of concepts, got the number 5"),
        ([True, "x" * 20001], "SEGA concepts: is 20001 characters long; the limit is 20000"),
        ([True, "x"] + [0] * (len(FIELDS) - 1),
         f"SEGA args: takes at most {len(FIELDS)} positional values, got {len(FIELDS) + 1}"),
        ([{"momentum": 1}], "SEGA momentum: is not a SEGA setting — did you mean 'momentum_scale'?"),
        ([{"colour": 1}], f"SEGA colour: is not a SEGA setting (known: {', '.join(f.name for f in FIELDS)})"),
        ([{"concepts": [{"prompt": "a", "scal": 3}]}], "SEGA concepts[1].scal: is not a concept setting — did you mean 'scale'?"),
        ([{"concepts": [{"scale": 3}]}], "SEGA concepts[1].prompt: is missing"),
        ([{"concepts": [{"prompt": ""}]}], "SEGA concepts[1].prompt: is empty"),
        ([{"concepts": [{"prompt": "a\nb"}]}], "SEGA concepts[1].prompt: must be a single line"),
        ([{"concepts": [{"prompt": "a", "weight": -1}]}], "SEGA concepts[1].weight: cannot be negative, got -1"),
        ([{"concepts": [{"prompt": "a", "reverse": "no"}]}], "SEGA concepts[1].reverse: must be true or false, got 'no'"),
        ([{"concepts": [7]}], "SEGA concepts[1]: must be an object or a concept line, got the number 7"),
        ([{"concepts": ["a\nb"]}], "SEGA concepts[1]: must be exactly one concept line"),
        ([{"concepts": [{"prompt": str(i)} for i in range(9)]}], "SEGA concepts: has 9 concepts; the limit is 8 (Settings → SEGA)"),
        ([{"momentum_beta": 1.5}], "SEGA momentum_beta: must be between 0 and 1, got 1.5"),
        ([{"cooldown": True}], "SEGA cooldown: must be a step count or a share like 20%, got a boolean"),
    ],
)
def test_bad_input_names_field_and_problem(values, message):
    with pytest.raises(SegaInputError) as e:
        SegaArgs.from_values(values)
    assert str(e.value) == message


def test_mixed_units_are_checked_when_steps_are_known():
    a = SegaArgs.from_values([True, "x :: warmup=50% cooldown=10"])
    with pytest.raises(SegaInputError) as e:
        a.concept_guidance(20)
    assert str(e.value) == (
        "SEGA concepts[1]: cooldown (10 = step 10) must come after warmup (50% = step 10) at 20 steps for 'x'"
    )
    assert (a.concept_guidance(18)[0].warmup, a.concept_guidance(18)[0].cooldown) == (9, 10)


def test_percentages_resolve_against_the_pass_steps():
    a = SegaArgs.from_values([True, "x\ny :: warmup=2 cooldown=90%", 5.0, 0.9, "20%", "50%"])
    x, y = a.concept_guidance(25)
    assert (x.warmup, x.cooldown) == (5, 13)  # 20% of 25 = 5, 50% of 25 = 12.5 → 13
    assert (y.warmup, y.cooldown) == (2, 23)
    hires_x, _ = a.concept_guidance(10)
    assert (hires_x.warmup, hires_x.cooldown) == (2, 5)


_settings = st.fixed_dictionaries(
    {
        "enabled": st.just(True),
        "concepts": st.lists(st.sampled_from(["smile", "-glasses :: scale=3", "a, b: c :: weight=0.5", "\"q\""]),
                             min_size=1, max_size=4).map("\n".join),
        "scale": st.floats(0, 30, allow_nan=False),
        "threshold": st.floats(0, 1, allow_nan=False),
        "warmup": st.integers(0, 20).map(str) | st.floats(0, 50, allow_nan=False).map(lambda v: f"{v!r}%"),
        "weight": st.floats(0, 10, allow_nan=False),
        "momentum_scale": st.floats(0, 2, allow_nan=False),
        "momentum_beta": st.floats(0, 1, allow_nan=False),
        "hires": st.booleans(),
    }
)


@settings(max_examples=200, deadline=None)
@given(_settings)
def test_infotext_round_trip(named):
    a = SegaArgs.from_named(named)
    info = a.to_infotext()
    assert all(k.startswith("SEGA ") for k in info)
    assert SegaArgs.from_infotext(info) == a
    assert SegaArgs.from_values(a.ui_values()) == a


def test_infotext_is_compact_and_absent_when_off():
    a = SegaArgs.from_values([True, "smile", 5.0, 0.95, "20%", "", 1.0, 0.3, 0.6, True])
    assert a.to_infotext() == {"SEGA concepts": "smile"}
    b = a.with_values(threshold=0.9, hires=False)
    assert b.to_infotext() == {"SEGA concepts": "smile", "SEGA threshold": "0.9", "SEGA hires": "False"}
    assert SegaArgs.from_infotext({"Steps": "20"}) is None


def test_mask_by_name_position_concept_object_and_concept_line():
    names = [f.name for f in FIELDS]
    values = list(UI_DEFAULTS)
    values[:2] = [True, "smile\n-glasses :: mask=attention"]
    values[names.index("mask")] = "Intersect"
    a = SegaArgs.from_values(values)
    assert a.mask == "intersect" and a.concepts[1].mask == "attention" and a.uses_masks
    assert [c.mask for c in a.concept_guidance(10)] == ["intersect", "attention"]
    assert a.to_infotext()["SEGA mask"] == "intersect"
    assert SegaArgs.from_infotext(a.to_infotext()) == a
    assert "SEGA mask" not in a.with_values(mask="threshold").to_infotext()
    named = SegaArgs.from_values([{"concepts": [{"prompt": "smile", "mask": "attention"}]}])
    assert named.concepts[0].mask == "attention" and named.mask == "threshold"
    assert not SegaArgs.from_values([True, "smile"]).uses_masks
    with pytest.raises(SegaInputError) as e:
        SegaArgs.from_values([{"concepts": "smile", "mask": "soft"}])
    assert (e.value.field, e.value.problem) == ("mask", "must be one of threshold, attention, intersect, got 'soft'")
    with pytest.raises(SegaInputError, match=r"concepts\[1\]\.mask: must be one of"):
        SegaArgs.from_values([{"concepts": [{"prompt": "smile", "mask": 3}]}])
    assert "mask must be one of" in parse_concepts("smile :: mask=both").errors[0].problem
