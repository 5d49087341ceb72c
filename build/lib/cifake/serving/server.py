"""The LitServer around :class:`~cifake.serving.api.DetectorAPI`: ``POST /predict`` behind the
request guard, ``GET /`` the page to drop images on, ``GET /health`` and ``GET /info`` (LitServe's),
and every refusal as ``{"error": reason}``."""

from __future__ import annotations

import dataclasses
from importlib.resources import files
from typing import Any

import litserve as ls
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.responses import HTMLResponse, JSONResponse

from cifake.serving.api import DetectorAPI
from cifake.serving.guard import GuardSettings, RequestGuard

PAGE = "page.html"  # package data beside this module: one static page, no build step, nothing fetched from elsewhere
# LitServe's own wording for its errors, said so that a client knows what to do.
REASONS = {504: "the request waited longer than request_timeout in the queue: the server is busy, try again",
           500: "internal server error (the server's log has the details); the server is still running"}


def page() -> str:
    """The web page's HTML."""
    return files("cifake.serving").joinpath(PAGE).read_text(encoding="utf-8")


async def as_error(request: Request, exc: HTTPException) -> JSONResponse:
    """An HTTP error (LitServe's, or Starlette's for a malformed form) in the shape of every refusal."""
    reason = REASONS.get(exc.status_code) if exc.status_code >= 500 else None
    return JSONResponse({"error": reason or str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def build_server(api: DetectorAPI, *, accelerator: str, workers: int, request_timeout: float,
                 guard_settings: GuardSettings, metadata: dict[str, Any]) -> ls.LitServer:
    """A LitServer for ``api`` (not started: ``server.run(...)``, or LitServe's test utilities), its
    ``POST`` requests checked by :class:`~cifake.serving.guard.RequestGuard` as ``guard_settings`` say."""
    max_upload_bytes = guard_settings.max_bytes
    guard = {"path": api.api_path, **dataclasses.asdict(guard_settings)}
    # LitServe pickles the parsed form to hand it to the inference worker, and Starlette spools a file part
    # past 1 MB to a temporary file, which cannot be pickled (a 500 for any photo over 1 MB). The guard has
    # held the whole body in memory already, up to the cap: parts that fit under it stay in memory too.
    # Class-wide, as Request.form() offers no setting for it; the HTTP servers parse no other forms.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_upload_bytes)
    server = ls.LitServer(api, accelerator=accelerator, devices="auto", workers_per_device=workers,
                          timeout=request_timeout, model_metadata=metadata, middlewares=[(RequestGuard, guard)])
    html = page()

    async def index() -> HTMLResponse:
        return HTMLResponse(html)

    # LitServe answers GET / with "litserve running"; the page takes its place.
    server.app.router.routes[:] = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    server.app.add_exception_handler(HTTPException, as_error)
    return server
