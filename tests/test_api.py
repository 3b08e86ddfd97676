"""The API validator in front of an app with the WebUI's txt2img route shape."""

from __future__ import annotations

import json
import math

import pytest

fastapi = pytest.importorskip("fastapi")
import webui  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from sega.fields import FIELDS  # noqa: E402
from sega_webui import api  # noqa: E402

webui.load()
from modules import infotext_utils  # noqa: E402

UI_DEFAULTS = [f.format(f.default) if f.kind.endswith("steps") else f.default for f in FIELDS]


def make_app(install_after_start: bool):
    app = fastapi.FastAPI()
    reached = []

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: fastapi.Request):
        body = await request.json()  # the route must still get the whole body
        reached.append(body)
        return {"images": [], "parameters": body}

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: fastapi.Request):
        body = await request.json()
        reached.append(body)
        return {"images": [], "parameters": body}

    @app.post("/sdapi/v1/other")
    async def other(request: fastapi.Request):
        reached.append("other")
        return {}

    if not install_after_start:
        api.install(app, lambda: 8, infotext_utils.parse_generation_parameters)
    client = TestClient(app)
    if install_after_start:
        client.post("/sdapi/v1/other", json={})  # the app is running now
        reached.clear()
        api.install(app, lambda: 8, infotext_utils.parse_generation_parameters)
    return client, reached


@pytest.fixture(scope="module", params=[False, True], ids=["installed at start", "installed while running"])
def client(request):
    return make_app(request.param)


PATHS = ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"]
IMG2IMG = {"init_images": ["iVBORw0KGgo="], "mask": "iVBORw0KGgo=", "denoising_strength": 0.75}


def post(client, sega=None, path=PATHS[0], **extra):
    body = {"prompt": "a face", "steps": 20, **(IMG2IMG if path.endswith("/img2img") else {})}
    body.update(extra)
    if sega is not None:
        body["alwayson_scripts"] = {"sega": sega}
    return client.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})


VALID = [
    {"args": [True, "smile\n-glasses :: scale=4"]},
    {"args": [True, "smile", 5, 0.9, "3", "", 1, 0.3, 0.6, True]},
    {"args": [True, "smile", 5, 0.9, "3", "", 1, 0.3, 0.6, True, True]},
    {"args": [{"concepts": "smile", "show_maps": True}]},
    {"args": [{"enabled": True, "concepts": [{"prompt": "glasses", "scale": 5, "threshold": 0.975},
                                             {"prompt": "beard", "reverse": True}], "momentum_scale": 0.3}]},
    {"args": [{"enabled": True, "concepts": "glasses\n-beard", "warmup": "20%", "cooldown": 18}]},
    {"args": []},
    {},
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sega", VALID)
def test_valid_requests_reach_the_route_with_their_body(client, sega, path):
    c, reached = client
    reached.clear()
    r = post(c, sega, path)
    assert r.status_code == 200
    assert reached and reached[-1]["alwayson_scripts"]["sega"] == sega
    assert ("init_images" in reached[-1]) == path.endswith("/img2img")


def test_other_scripts_and_routes_are_untouched(client):
    c, reached = client
    reached.clear()
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"other": {"args": [7, "nan"]}}})
    assert r.status_code == 200 and len(reached) == 1
    assert c.post("/sdapi/v1/other", json={"alwayson_scripts": {"sega": {"args": [True, 5]}}}).status_code == 200


INVALID = [
    ({"args": [True, "x", 5.0, 7]}, "threshold", "must be between 0 and 1, got 7"),
    ({"args": [True, "x", math.nan]}, "scale", "must be a finite number, got nan"),
    ({"args": [True, "x", math.inf]}, "scale", "must be a finite number, got inf"),
    ({"args": [True, "x", "five"]}, "scale", "must be a number, got 'five'"),
    ({"args": [True, "x", [5]]}, "scale", "must be a number, got a list"),
    ({"args": [True, "x", {"v": 5}]}, "scale", "must be a number, got an object"),
    ({"args": [True, "x", None]}, "scale", "must be a number, got null"),
    ({"args": [True, "x", 31]}, "scale", "must be between 0 and 30, got 31"),
    ({"args": [True, "x", 5, 0.9, "2.5"]}, "warmup", "a step count must be a whole number (or a share like 20%), got '2.5'"),
    ({"args": [True, "x", 5, 0.9, "150%"]}, "warmup", "a share of the steps must be between 0% and 100%, got '150%'"),
    ({"args": [True, "x", 5, 0.9, -3]}, "warmup", "a step count cannot be negative, got '-3'"),
    ({"args": [True, "x", 5, 0.9, "5", "3"]}, "concepts[1]", "cooldown (3) must come after warmup (5) for 'x'"),
    ({"args": [True, "x", 5, 0.9, "5", 0]}, "cooldown", "must be after step 0 (leave it empty for no cooldown)"),
    ({"args": [True, "x", 5, 0.9, "5", "", -1]}, "weight", "cannot be negative, got -1"),
    ({"args": [True, "x", 5, 0.9, "5", "", 1, 3]}, "momentum_scale", "must be between 0 and 2, got 3"),
    ({"args": [True, "x", 5, 0.9, "5", "", 1, 0.3, 1.5]}, "momentum_beta", "must be between 0 and 1, got 1.5"),
    ({"args": [True, "x", 5, 0.9, "5", "", 1, 0.3, 0.5, "maybe"]}, "hires", "must be true or false, got 'maybe'"),
    ({"args": ["yes", "x"]}, "enabled", "must be true or false, got 'yes'"),
    ({"args": [True, 42]}, "concepts", "must be text or a list of concepts, got the number 42"),
    ({"args": [True, "x" * 20001]}, "concepts", "is 20001 characters long; the limit is 20000"),
    ({"args": [True, "x :: scle=3"]}, "concepts", "line 1 (x :: scle=3): unknown key 'scle' — did you mean 'scale'?"),
    ({"args": [True, "x :: threshold=7"]}, "concepts", "line 1 (x :: threshold=7): threshold must be between 0 and 1, got 7"),
    ({"args": [True, ":: scale=2"]}, "concepts", "line 1 (:: scale=2): the concept text is empty"),
    ({"args": [True, "\n".join(f"c{i}" for i in range(9))]}, "concepts", "line 9 (c8): too many concepts: 9 given, the limit is 8 (Settings → SEGA)"),
    ({"args": [True, "x"] + [None] * (len(FIELDS) - 1)}, "args",
     f"takes at most {len(FIELDS)} positional values, got {len(FIELDS) + 1}"),
    ({"args": [True, "x", 5, 0.9, "5", "", 1, 0.3, 0.5, True, "yes"]}, "show_maps", "must be true or false, got 'yes'"),
    ({"args": [True, "x", *("soft" if f.name == "mask" else f.format(f.default) if f.kind.endswith("steps")
                            else f.default for f in FIELDS[2:])]}, "mask",
     "must be one of threshold, attention, intersect, got 'soft'"),
    ({"args": [{"concepts": [{"prompt": "a", "mask": "all"}]}]}, "concepts[1].mask",
     "must be one of threshold, attention, intersect, got 'all'"),
    ({"args": "smile"}, "args", "must be a list (positional values, or one object of named settings)"),
    ({"args": {"enabled": True}}, "args", "must be a list (positional values, or one object of named settings)"),
    ("sega", "alwayson_scripts.sega", 'must be an object like {"args": [...]}'),
    ({"args": [{"enabled": True, "colour": "red"}]}, "colour", f"is not a SEGA setting (known: {', '.join(f.name for f in FIELDS)})"),
    ({"args": [{"momentum": 0.2}]}, "momentum", "is not a SEGA setting — did you mean 'momentum_scale'?"),
    ({"args": [{"concepts": [{"prompt": "a", "scal": 3}]}]}, "concepts[1].scal", "is not a concept setting — did you mean 'scale'?"),
    ({"args": [{"concepts": [{"scale": 3}]}]}, "concepts[1].prompt", "is missing"),
    ({"args": [{"concepts": [{"prompt": 5}]}]}, "concepts[1].prompt", "must be text, got the number 5"),
    ({"args": [{"concepts": [{"prompt": "a", "threshold": "high"}]}]}, "concepts[1].threshold", "must be a number, got 'high'"),
    ({"args": [{"concepts": [{"prompt": "a", "reverse": "no"}]}]}, "concepts[1].reverse", "must be true or false, got 'no'"),
    ({"args": [{"concepts": [{"prompt": "x" * 3000}]}]}, "concepts[1].prompt", "is 3000 characters long; the limit is 2000"),
    ({"args": [{"concepts": [{"prompt": str(i)} for i in range(9)]}]}, "concepts", "has 9 concepts; the limit is 8 (Settings → SEGA)"),
    ({"args": [{"concepts": [[1, 2]]}]}, "concepts[1]", "must be an object or a concept line, got a list"),
    ({"args": [{"concepts": "a", "scale": "NaN"}]}, "scale", "must be a finite number, got nan"),
]


def test_the_invalid_corpus_is_large_enough():
    assert len(INVALID) >= 30


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sega, field, problem", INVALID, ids=[f"{i:02d}-{c[1]}" for i, c in enumerate(INVALID)])
def test_invalid_requests_are_refused_before_sampling(client, sega, field, problem, path):
    c, reached = client
    reached.clear()
    r = post(c, sega, path)
    assert r.status_code == 422
    body = r.json()
    assert body["field"] == field and body["problem"] == problem
    assert body["detail"] == f"SEGA {field}: {problem}"
    assert reached == []


@pytest.mark.parametrize("path", PATHS)
def test_invalid_infotext_is_refused(client, path):
    c, reached = client
    reached.clear()
    info = 'a face\nSteps: 20, Sampler: Euler, SEGA concepts: "smile, grin", SEGA threshold: 7'
    r = post(c, None, path, infotext=info)
    assert r.status_code == 422 and r.json()["field"] == "threshold" and reached == []
    ok = post(c, None, path, infotext='a face\nSteps: 20, Sampler: Euler, SEGA concepts: "smile, grin", SEGA threshold: 0.9')
    assert ok.status_code == 200


def test_key_is_case_insensitive_like_the_webui(client):
    c, reached = client
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"SEGA": {"args": [True, "x", 99]}}})
    assert r.status_code == 422 and r.json()["field"] == "scale"


@pytest.mark.parametrize("sega", [
    {"args": [{"concepts": "smile", "invert": True}]},
    {"args": [True, "smile", *UI_DEFAULTS[2:11], True]},
    {"args": [{"concepts": "", "invert": "true"}]},
])
def test_invert_is_refused_on_txt2img_and_taken_on_img2img(client, sega):
    c, reached = client
    reached.clear()
    r = post(c, sega, "/sdapi/v1/txt2img")
    assert r.status_code == 422 and reached == []
    assert r.json()["field"] == "invert" and "/sdapi/v1/img2img" in r.json()["problem"]
    assert post(c, sega, "/sdapi/v1/img2img").status_code == 200 and len(reached) == 1
    # switched off, the same args are fine on txt2img
    off = {"args": [{**sega["args"][0], "enabled": False}]} if isinstance(sega["args"][0], dict) else {
        "args": [False, *sega["args"][1:]]}
    assert post(c, off, "/sdapi/v1/txt2img").status_code == 200
