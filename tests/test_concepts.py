import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sega.concepts import (
    Concept,
    format_concept,
    format_concepts,
    parse_concepts,
    parse_line,
)
from sega.steps import Steps

EXAMPLE = """smiling, smile
glasses, wearing glasses :: scale=5 threshold=0.975
-beard, full beard :: scale=5.4 warmup=20% cooldown=80% weight=0.5
"""


def test_example_from_the_issue():
    result = parse_concepts(EXAMPLE)
    assert result.ok
    assert result.concepts == (
        Concept("smiling, smile"),
        Concept("glasses, wearing glasses", scale=5.0, threshold=0.975),
        Concept(
            "beard, full beard",
            reverse=True,
            scale=5.4,
            warmup=Steps(20.0, True),
            cooldown=Steps(80.0, True),
            weight=0.5,
        ),
    )
    assert result.lines == (1, 2, 3)


def test_comments_blank_lines_signs_and_separators():
    text = "# a comment\n\n  +smile  \n- glasses ::scale = 4,threshold=0.9 , warmup=3\r\n   # another\n"
    result = parse_concepts(text)
    assert result.errors == ()
    assert result.concepts == (
        Concept("smile"),
        Concept("glasses", reverse=True, scale=4.0, threshold=0.9, warmup=Steps(3.0)),
    )
    assert result.lines == (3, 4)


def test_prompt_syntax_is_left_untouched():
    text = "(smile:1.2), [cat::10], BREAK, embedding-name, a:b"
    assert parse_line(text) == Concept(text)
    assert parse_line(text + " :: weight=2") == Concept(text, weight=2.0)


def test_double_colon_inside_the_prompt_round_trips():
    c = Concept("a::b")
    assert format_concept(c) == "a::b ::"
    assert parse_line(format_concept(c)) == c


@pytest.mark.parametrize(
    "line, message",
    [
        ("x :: scle=5", "line 1 (x :: scle=5): unknown key 'scle' — did you mean 'scale'?"),
        ("x :: foo=5", "line 1 (x :: foo=5): unknown key 'foo' (known: scale, threshold, warmup, cooldown, weight, mask)"),
        ("x :: scale=100", "line 1 (x :: scale=100): scale must be between 0 and 30, got 100"),
        ("x :: threshold=7", "line 1 (x :: threshold=7): threshold must be between 0 and 1, got 7"),
        ("x :: threshold=-0.5", "line 1 (x :: threshold=-0.5): threshold cannot be negative, got -0.5"),
        ("x :: scale=nan", "line 1 (x :: scale=nan): scale must be a finite number, got nan"),
        ("x :: weight=inf", "line 1 (x :: weight=inf): weight must be a finite number, got inf"),
        ("x :: weight=-1", "line 1 (x :: weight=-1): weight cannot be negative, got -1"),
        ("x :: scale=big", "line 1 (x :: scale=big): scale must be a number, got 'big'"),
        ("x :: warmup=10 cooldown=5", "line 1 (x :: warmup=10 cooldown=5): cooldown (5) must come after warmup (10)"),
        ("x :: warmup=50% cooldown=50%", "line 1 (x :: warmup=50% cooldown=50%): cooldown (50%) must come after warmup (50%)"),
        ("x :: warmup=2.5", "line 1 (x :: warmup=2.5): warmup a step count must be a whole number (or a share like 20%), got '2.5'"),
        ("x :: warmup=120%", "line 1 (x :: warmup=120%): warmup a share of the steps must be between 0% and 100%, got '120%'"),
        ("x :: cooldown=0", "line 1 (x :: cooldown=0): cooldown must be after step 0 (leave it empty for no cooldown)"),
        ("x :: scale", "line 1 (x :: scale): expected key=value after '::', got 'scale'"),
        ("x :: scale=", "line 1 (x :: scale=): 'scale' needs a value"),
        ("x :: scale=1 scale=2", "line 1 (x :: scale=1 scale=2): 'scale' is given twice"),
        (":: scale=3", "line 1 (:: scale=3): the concept text is empty"),
        ("-", "line 1 (-): the concept text is empty"),
    ],
)
def test_error_messages(line, message):
    result = parse_concepts(line)
    assert result.concepts == ()
    assert [str(e) for e in result.errors] == [message]


def test_errors_name_their_line_and_good_lines_still_parse():
    result = parse_concepts("good\n\nbad :: scale=x\nalso good")
    assert [c.text for c in result.concepts] == ["good", "also good"]
    assert [(e.line, e.text) for e in result.errors] == [(3, "bad :: scale=x")]


def test_long_lines_are_shortened_in_messages():
    line = "a" * 100 + " :: scale=99"
    (error,) = parse_concepts(line).errors
    assert str(error) == "line 1 (" + "a" * 39 + "…): scale must be between 0 and 30, got 99"


def test_too_many_concepts():
    text = "\n".join(f"c{i}" for i in range(10))
    result = parse_concepts(text, max_concepts=8)
    assert len(result.concepts) == 8
    assert [str(e) for e in result.errors] == [  # once, however many lines are over the limit
        "line 9 (c8): too many concepts: 10 given, the limit is 8 (Settings → SEGA)",
    ]
    assert parse_concepts(text, max_concepts=10).ok


def test_raise_for_errors_names_the_field():
    with pytest.raises(ValueError) as e:
        parse_concepts("x :: scle=1").raise_for_errors()
    assert str(e.value) == "SEGA concepts: line 1 (x :: scle=1): unknown key 'scle' — did you mean 'scale'?"


# ---- property: parse(format(x)) == x -------------------------------------------------------

_text = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
        min_size=1,
        max_size=30,
    )
    .map(str.strip)
    .filter(bool)
)
_prompt_like = st.sampled_from(
    ["smile", "(smile:1.3)", "[cat::10]", "a::b", "-x", "+y", "#tag", "a, b :: c", "x ::", "BREAK", "é ü 日本"]
)
_steps = st.one_of(
    st.integers(0, 150).map(lambda n: Steps(float(n))),
    st.floats(0, 100, allow_nan=False).map(lambda v: Steps(v, True)),
)


@st.composite
def concepts(draw):
    warmup = draw(st.none() | _steps)
    cooldown = draw(st.none() | _steps.filter(lambda s: s.value > 0))
    if warmup is not None and cooldown is not None and warmup.percent == cooldown.percent:
        if cooldown.value <= warmup.value:
            cooldown = None
    return Concept(
        text=draw(st.one_of(_text, _prompt_like, st.tuples(_prompt_like, _text).map(" ".join))),
        reverse=draw(st.booleans()),
        scale=draw(st.none() | st.floats(0, 30, allow_nan=False)),
        threshold=draw(st.none() | st.floats(0, 1, allow_nan=False)),
        warmup=warmup,
        cooldown=cooldown,
        weight=draw(st.none() | st.floats(0, 10, allow_nan=False)),
    )


@settings(max_examples=400, deadline=None)
@given(concepts())
def test_format_then_parse_is_identity(concept):
    line = format_concept(concept)
    assert "\n" not in line
    assert parse_line(line) == concept


@settings(max_examples=100, deadline=None)
@given(st.lists(concepts(), max_size=8))
def test_format_is_canonical_for_lists(items):
    text = format_concepts(items)
    result = parse_concepts(text)
    assert result.ok
    assert list(result.concepts) == items
    assert format_concepts(result.concepts) == text


def test_extra_network_tags_are_left_out_of_concepts():
    from sega.args import SegaArgs
    from sega.preview import render_preview

    result = parse_concepts("smile <lora:happy:0.8>, grin\n-<hypernet:h> glasses :: scale=3\n<lora:x:1>")
    first, second = result.concepts
    assert (first.text, first.networks) == ("smile, grin", ("<lora:happy:0.8>",))
    assert (second.text, second.reverse, second.scale) == ("glasses", True, 3.0)
    assert "extra networks apply to the whole model" in result.errors[0].problem
    assert format_concepts(result.concepts) == "smile, grin\n-glasses :: scale=3"
    api = SegaArgs.from_named({"concepts": [{"prompt": "<lora:a:1> smile"}]})
    assert api.concepts[0].text == "smile" and api.concepts[0].networks == ("<lora:a:1>",)
    html = render_preview("smile <lora:happy:0.8>")
    assert 'class="sega-notes"' in html and "&lt;lora:happy:0.8&gt; left out" in html
    assert 'class="sega-notes"' not in render_preview("smile")


def test_a_cancel_passes_through_the_call_with_the_concepts_lists():
    from sega.cond_lists import call_with_lists

    class InterruptProcessingException(Exception):  # ComfyUI's and reForge's, by name
        pass

    def cancelled(*args):
        raise InterruptProcessingException()

    seen = []
    with pytest.raises(InterruptProcessingException):
        call_with_lists(cancelled, None, [[1], [2]], None, None, {}, [[3]], {}, seen.append)
    assert seen == []

    def out_of_memory(model, conds, *args):
        if len(conds) > 2:
            raise MemoryError("no room")
        return ["cond", "uncond"]

    assert call_with_lists(out_of_memory, None, [[1], [2]], None, None, {}, [[3]], {}, seen.append) == (
        ["cond", "uncond"], None)
    assert [type(e).__name__ for e in seen] == ["MemoryError"]
