"""Refuses API requests whose SEGA args are invalid, with HTTP 422, before the WebUI
queues them: the WebUI swallows exceptions raised in script hooks, so a check inside the
script could only comment on an image that was sampled anyway.

A plain ASGI middleware (no Starlette base class), so it works whichever Starlette the
WebUI ships: it reads the request body, checks it, and replays it to the app.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from sega.args import SegaArgs
from sega.errors import SegaInputError

TXT2IMG_PATH = "/sdapi/v1/txt2img"
CHECKED_PATHS = (TXT2IMG_PATH, "/sdapi/v1/img2img")
SCRIPT_KEY = "sega"


def check_request(
    payload: Any,
    max_concepts: int,
    parse_infotext: Callable[[str], Mapping[str, str]] | None,
    img2img: bool = True,
) -> None:
    """Raise SegaInputError for invalid SEGA settings in a txt2img (`img2img` False) or
    img2img request body."""
    if not isinstance(payload, Mapping):
        return  # not ours to judge; the WebUI answers malformed bodies itself
    scripts = payload.get("alwayson_scripts")
    if isinstance(scripts, Mapping):
        for name, entry in scripts.items():
            if str(name).lower() != SCRIPT_KEY:
                continue
            if not isinstance(entry, Mapping):
                raise SegaInputError("alwayson_scripts.sega", 'must be an object like {"args": [...]}')
            args = entry.get("args", [])
            if not isinstance(args, list):
                raise SegaInputError("args", "must be a list (positional values, or one object of named settings)")
            parsed = SegaArgs.from_values(args, max_concepts)
            if parsed.invert and parsed.enabled and not img2img:
                raise SegaInputError("invert", "edits an input image: send it to /sdapi/v1/img2img "
                                               "(txt2img has no image to invert)")
    infotext = payload.get("infotext")
    if parse_infotext is not None and isinstance(infotext, str) and infotext:
        SegaArgs.from_infotext(parse_infotext(infotext), max_concepts)


def error_body(e: SegaInputError) -> dict[str, str]:
    return {"error": "Invalid SEGA settings", "detail": str(e), "field": e.field, "problem": e.problem}


class SegaRequestValidator:
    def __init__(self, app, max_concepts: Callable[[], int], parse_infotext=None, paths=CHECKED_PATHS):
        self.app = app
        self.max_concepts = max_concepts
        self.parse_infotext = parse_infotext
        self.paths = paths

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        try:
            check_request(payload, self.max_concepts(), self.parse_infotext, scope.get("path") != TXT2IMG_PATH)
        except SegaInputError as e:
            await _send_json(send, 422, error_body(e))
            return

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def install(app, max_concepts: Callable[[], int], parse_infotext=None) -> None:
    """Put the validator in front of `app` (a FastAPI/Starlette app that may be running)."""
    try:
        app.add_middleware(SegaRequestValidator, max_concepts=max_concepts, parse_infotext=parse_infotext)
    except RuntimeError:  # newer Starlette refuses middleware once started: wrap the built stack
        app.middleware_stack = SegaRequestValidator(
            app.middleware_stack or app.build_middleware_stack(), max_concepts, parse_infotext
        )
