"""The checks a request to ``POST /predict`` passes before LitServe sees it (plain ASGI, in the
API server process): the API key, the content type, the upload size cap and well-formed JSON.

LitServe answers a body that is not JSON, a form it cannot parse, or one declared as neither, with
a 500; this guard answers each with a 4xx that names the problem. The body is read once, up to
the cap, checked to parse as it says it is, and handed on unchanged.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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


def error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every refusal: ``{"error": reason}``."""
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


class RequestGuard:
    """ASGI middleware for ``POST path``: 401 without the API key (when one is set; compared in
    constant time), 415 for a body that is neither a multipart form nor JSON, 413 past ``max_bytes``
    (from ``Content-Length`` before anything is read, else while reading), 400 for JSON that does not
    parse. Every other request passes untouched."""

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int, api_key: str | None = None,
                 api_key_header: str = "X-API-Key") -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes
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
        if kind == JSON:
            try:
                json.loads(body)
            except (UnicodeDecodeError, ValueError) as err:
                return error(400, f"the body is not valid JSON ({err})"), b""
        else:
            refusal = await check_form(headers, body)
            if refusal is not None:
                return refusal, b""
        return None, body

    def too_large(self, size: str) -> JSONResponse:
        # Connection: close, so the server need not read a large body it has refused.
        return error(413, f"upload too large: {size}, over the cap of {megabytes(self.max_bytes)} (max_upload_mb)",
                     {"Connection": "close"})


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
