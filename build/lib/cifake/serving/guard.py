"""The checks a request to ``POST /predict`` passes before LitServe sees it (plain ASGI, in the
API server process): the API key, the content type, the upload size cap, JSON nested no deeper than
the limit, and a body that parses as it says it is.

LitServe answers a body that is not JSON, a form it cannot parse, or one declared as neither, with
a 500; this guard answers each with a 4xx that names the problem. The body is read once, up to
the cap; JSON's nesting is measured before the parser runs (a deep one overflows Python's
recursion, in the parser or in the pickling that hands it to the inference worker); the body is
checked to parse as it says it is, and handed on unchanged, its Content-Type spelled as LitServe
expects it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FORM, JSON = "multipart/form-data", "application/json"
# Starlette's own limits for Request.form(), which LitServe calls: a form that passes here parses there too.
FORM_LIMITS = {"max_files": 1000, "max_fields": 1000}
# JSON's nesting, counted over the raw bytes: +1 for an opening bracket, -1 for a closing one, outside strings.
STEPS = np.zeros(256, dtype=np.int8)
STEPS[list(b"[{")], STEPS[list(b"]}")] = 1, -1
CHUNK = 2**20  # bytes counted at a time: a few MB of scratch memory for any body


@dataclass(frozen=True)
class GuardSettings:
    """What :class:`RequestGuard` holds a request to: at most ``max_bytes`` of body, JSON nested at most
    ``max_json_depth`` deep, and the API key (``None``: none asked for) in the ``api_key_header`` header."""

    max_bytes: int
    max_json_depth: int
    api_key: str | None
    api_key_header: str


def error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every refusal: ``{"error": reason}``."""
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


class RequestGuard:
    """ASGI middleware for ``POST path``: 401 without the API key (when one is set; compared in
    constant time), 415 for a body that is neither a multipart form nor JSON, 413 past ``max_bytes``
    (from ``Content-Length`` before anything is read, else while reading), 400 for JSON nested deeper
    than ``max_json_depth`` (measured before it is parsed) or that does not parse, and for a form that
    does not parse. Every other request passes untouched."""

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int, max_json_depth: int, api_key: str | None,
                 api_key_header: str) -> None:
        self.app, self.path, self.max_bytes, self.max_json_depth = app, path, max_bytes, max_json_depth
        self.api_key = api_key.encode() if api_key else None
        self.api_key_header = api_key_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        refusal, body = await self.check(scope, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope = canonical_content_type(scope)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, as the server reports it

        await self.app(scope, replay, send)

    async def check(self, scope: Scope, receive: Receive) -> tuple[JSONResponse | None, bytes]:
        """A refusal, or ``None`` and the whole body."""
        headers = Headers(scope=scope)
        if self.api_key is not None:
            given = headers.get(self.api_key_header, "").encode()
            if not hmac.compare_digest(given, self.api_key):
                reason = "wrong API key" if given else "missing API key"
                return error(401, f"{reason}: send it in the {self.api_key_header} header"), b""
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in (FORM, JSON):
            sent = kind or "none"
            return error(415, f"content type {sent!r} is not accepted: send the images as {FORM} (field 'file') "
                              f"or as {JSON} with base64"), b""
        declared = headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return error(400, f"Content-Length {declared!r} is not a number"), b""
            if length > self.max_bytes:
                return self.too_large(f"{megabytes(length)}"), b""
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return error(400, "the client went away before the body was sent"), b""
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:  # a chunked upload with no Content-Length, or one that lied
                return self.too_large(f"more than {megabytes(self.max_bytes)}"), b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        refusal = check_json(body, self.max_json_depth) if kind == JSON else await check_form(headers, body)
        return (refusal, b"") if refusal is not None else (None, body)

    def too_large(self, size: str) -> JSONResponse:
        # Connection: close, so the server need not read a large body it has refused.
        return error(413, f"upload too large: {size}, over the cap of {megabytes(self.max_bytes)} (max_upload_mb)",
                     {"Connection": "close"})


def canonical_content_type(scope: Scope) -> Scope:
    """``scope`` with one Content-Type header, its media type in lower case. Media types are
    case-insensitive (RFC 9110), and this guard reads them so, but LitServe parses a form only when
    the header starts with ``multipart/form-data`` exactly, and reads anything else as JSON (a 500
    for ``Multipart/Form-Data``). Its parameters (the boundary) keep their case."""
    value = Headers(scope=scope).get("content-type", "")
    kind, sep, params = value.partition(";")
    headers = [(name, v) for name, v in scope["headers"] if name.lower() != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", (kind.strip().lower() + sep + params).encode("latin-1"))]}


def json_depth(body: bytes, limit: int) -> int:
    """How deeply the arrays and objects of the JSON text ``body`` nest, counted over its bytes without
    parsing it (brackets inside strings left out); counting stops once past ``limit``. Linear in
    time, with a few MB of memory for any body. Exact for valid JSON; for broken JSON, a number."""
    encoding = json.detect_encoding(body)  # as json.loads reads bytes; UTF-16 and UTF-32 are counted as UTF-8
    text = body if encoding.startswith("utf-8") else body.decode(encoding, "surrogatepass").encode(
        "utf-8", "surrogatepass")
    # In UTF-8 a quote or bracket byte is that character (multi-byte sequences use bytes >= 0x80). Escaped
    # backslashes go first, then escaped quotes: every quote left opens or closes a string.
    text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    level = deepest = 0
    inside = 0  # 1 when the previous chunk ended inside a string
    for start in range(0, len(text), CHUNK):
        chunk = np.frombuffer(text, dtype=np.uint8, count=min(CHUNK, len(text) - start), offset=start)
        quotes = np.cumsum(chunk == ord('"'), dtype=np.int64) + inside
        depth = level + np.cumsum(STEPS[chunk] * (quotes % 2 == 0), dtype=np.int64)
        deepest, level, inside = max(deepest, int(depth.max())), int(depth[-1]), int(quotes[-1] % 2)
        if deepest > limit:
            break
    return deepest


def check_json(body: bytes, max_depth: int) -> JSONResponse | None:
    """A 400 for a body that is not JSON, or nests deeper than ``max_depth``: measured before the
    parser runs, since Python's parser recurses once per level and fails with a RecursionError
    around a thousand, and pickling it for the inference worker fails well before that."""
    try:
        depth = json_depth(body, max_depth)
        if depth > max_depth:
            return error(400, f"the JSON body nests more than {max_depth} levels deep (max_json_depth); a request "
                              'needs at most 3: {"images": [{"data": "<base64>"}]}')
        json.loads(body)
    except (UnicodeError, ValueError) as err:
        return error(400, f"the body is not valid JSON ({err})")
    return None


async def check_form(headers: Headers, body: bytes) -> JSONResponse | None:
    """A 400 for a multipart body that does not parse (no boundary, broken parts, too many parts)."""

    async def stream() -> Any:
        yield body

    try:
        form = await MultiPartParser(headers, stream(), **FORM_LIMITS).parse()
    except MultiPartException as err:
        return error(400, f"the multipart body cannot be parsed: {err.message}")
    await form.close()
    return None
