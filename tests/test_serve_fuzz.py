"""POST /predict fuzzed, on a real serve.py on 127.0.0.1 (started as users start it, with the tests'
tiny checkpoint): hypothesis generates what a client can send (JSON of any shape, type, nesting and
encoding; multipart forms with any number of parts, names, file names, part headers and broken
framing; any bytes under any content type; hostile header values; chunked or not) and every answer
must be a 2xx with the images, or a 4xx whose JSON body says what was wrong: never a 5xx, never a
traceback in the server's log, and /health answers after. Then the server's shutdown, on SIGTERM and
on Ctrl+C: exit status 0 and no traceback from any of its processes.

Bounded in count (EXAMPLES per test) and time (a minute or so on 2 cores), and reproducible:
hypothesis is derandomized, and keeps no example database."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifake.serving.guard import json_depth
from tests.helpers import ROOT
from tests.helpers.models import make_checkpoint
from tests.helpers.runner import load_test_module

lt = load_test_module()  # scripts/load_test.py: running_server, bomb_png

EXAMPLES = 300  # generated requests per fuzzing test (three of them)
CAP_MB = 2  # max_upload_mb: over Starlette's 1 MB spool for a file part, small enough to send over it quickly
CAP = CAP_MB * 2**20
# Small limits, so that fuzzing reaches every refusal.
OVERRIDES = ["device=cpu", "log_level=warning", f"max_upload_mb={CAP_MB}", "max_images=4",
             "max_image_pixels=1000000"]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # header names
# Headers that frame the message or the connection: httpx sets them (and the Content-Type is drawn on its own);
# sent wrong, they make a request no HTTP client sends: test_broken_framing_is_refused_or_dropped sends those.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "keep-alive", "upgrade", "expect", "te",
           "trailer", "content-type"}


# --- what a request may carry ----------------------------------------------------------------------------------


def _saved(size: tuple[int, int], mode: str, fmt: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {  # readable images of each accepted format, and a few that must be refused
    "a.png": _saved((8, 8), "RGB", "PNG", 0), "b.jpg": _saved((32, 32), "RGB", "JPEG", 1),
    "c.gif": _saved((16, 12), "P", "GIF", 2), "d.bmp": _saved((5, 40), "RGB", "BMP", 3),
    "e.webp": _saved((33, 33), "RGB", "WEBP", 4), "f.tiff": _saved((4, 4), "L", "TIFF", 5),
    "g.png": _saved((20, 20), "RGBA", "PNG", 6), "h.ppm": _saved((4, 4), "RGB", "PPM", 7),
    "bomb.png": lt.bomb_png(), "wide.png": lt.bomb_png(2000, 1000),
}
# A file part past Starlette's 1 MB spool, under the cap: LitServe could not pickle it for the worker (a 500).
BIG_PNG = _saved((640, 640), "RGB", "PNG", 8)
assert 2**20 < len(BIG_PNG) < CAP - 2**16


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int = 4) -> st.SearchStrategy[Any]:
    """``common``, or ``rare`` about once in ``one_in`` draws (shrinking towards ``common``): most requests
    are close enough to right to reach the decoder and the model, the rest are wrong in any way."""
    return now_and_then(one_in).flatmap(lambda rarely: rare if rarely else common)


def now_and_then(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in ``one_in`` draws. (Hypothesis draws the low end of a range more often than the
    rest: the high end is the rare one.)"""
    return st.integers(0, one_in - 1).map(lambda n: n == one_in - 1)


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """An image whole, cut short, overwritten in places or grown; or any bytes."""
    data = draw(st.sampled_from(sorted(IMAGES.values())))
    how = draw(st.sampled_from(["whole"] * 3 + ["cut", "flip", "append", "random", "empty"]))
    if how == "cut":
        return data[:draw(st.integers(0, len(data)))]
    if how == "flip":
        buffer = bytearray(data)
        for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            buffer[at] = draw(st.integers(0, 255))
        return bytes(buffer)
    if how == "append":
        return data + draw(st.binary(max_size=64))
    if how == "random":
        return draw(st.binary(max_size=256))
    return b"" if how == "empty" else data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


base64_text = mostly(
    st.one_of(image_bytes().map(_b64), image_bytes().map(lambda d: "data:image/png;base64," + _b64(d)),
              image_bytes().map(lambda d: "\n ".join(_b64(d)[i:i + 76] for i in range(0, len(_b64(d)), 76)))),
    st.one_of(image_bytes().map(lambda d: "data:image/png," + _b64(d)),  # a data URL without ;base64
              image_bytes().map(lambda d: _b64(d).rstrip("=")),  # padding dropped
              st.text(max_size=40)))  # not base64 at all: any Unicode, lone surrogates included
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**400), 10**400),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                        st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
flags = mostly(st.sampled_from([True, False, "true", "no", "on", "1", "OFF", ""]),
               st.one_of(st.sampled_from(["maybe", "TRUE ", "2"]), any_json))
thresholds = mostly(st.one_of(st.floats(0, 1), st.sampled_from(["0.5", "1e-3", "-0", "1", ""])),
                    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**400), 10**400),
                              st.sampled_from(["2", "nan", "inf", "half"]), any_json))
names = mostly(st.text(max_size=30), any_json)
image_items = mostly(st.one_of(base64_text, st.fixed_dictionaries({"data": base64_text}, optional={"name": names})),
                     st.one_of(st.fixed_dictionaries({}, optional={"data": any_json, "name": names}), any_json))
good_objects = st.one_of(  # a request as the README describes it, its values right or wrong
    st.fixed_dictionaries({"image": base64_text}, optional={"name": names, "gradcam": flags, "threshold": thresholds}),
    st.fixed_dictionaries({"images": st.lists(image_items, min_size=1, max_size=5)},
                          optional={"gradcam": flags, "threshold": thresholds}))
any_objects = st.fixed_dictionaries({}, optional={
    "image": st.one_of(base64_text, any_json), "images": st.one_of(st.lists(image_items, max_size=6), any_json),
    "name": names, "gradcam": flags, "threshold": thresholds})
json_content_types = mostly(st.sampled_from(["application/json", "application/json; charset=utf-8"]),
                            st.sampled_from(["Application/JSON", "application/json;charset=latin-1",
                                             "APPLICATION/JSON ; x=y", "application/json; charset=bogus"]))


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """A JSON text: a request's object (its keys of any type, an unknown key now and then) or any JSON,
    nested in up to thousands of arrays, in any of JSON's encodings, sometimes cut short."""
    value = draw(mostly(good_objects, st.one_of(any_objects, any_json), one_in=3))
    if isinstance(value, dict) and draw(now_and_then(6)):
        value.update(draw(st.dictionaries(st.text(max_size=6), any_json, min_size=1, max_size=2)))
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    depth = draw(mostly(st.just(0), st.sampled_from([2, 7, 9, 50, 990, 5000])))
    text = "[" * depth + text + "]" * depth
    encoding = draw(mostly(st.just("utf-8"), st.sampled_from(["utf-8-sig", "utf-16", "utf-32", "latin-1"])))
    body = text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")
    if draw(now_and_then(10)):
        body = body[:draw(st.integers(0, len(body)))]
    return body


def _disposition(name: bytes, filename: bytes | None) -> bytes:
    clean = filename.replace(b'"', b"").replace(b"\r", b"").replace(b"\n", b"") if filename is not None else None
    return b'Content-Disposition: form-data; name="' + name + b'"' + (
        b'; filename="' + clean + b'"' if clean is not None else b"")


any_filename = st.one_of(st.none(), st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
                         st.binary(max_size=12))


@st.composite
def file_parts(draw: st.DrawFn) -> bytes:
    """A part that carries an image (or tries to): field ``file``, a file name, maybe a content type."""
    name = draw(mostly(st.just(b"file"), st.text(max_size=10).map(lambda t: t.encode("utf-8", "surrogatepass"))))
    filename = draw(mostly(st.sampled_from([n.encode() for n in IMAGES]), any_filename))
    headers = [_disposition(name, filename)]
    if draw(st.booleans()):
        headers.append(b"Content-Type: " + draw(st.sampled_from(
            [b"image/png", b"application/octet-stream", b"text/plain; charset=bogus", b"text/plain; charset=utf-16"])))
    return b"\r\n".join(headers) + b"\r\n\r\n" + draw(mostly(image_bytes(), st.binary(max_size=64)))


@st.composite
def option_parts(draw: st.DrawFn) -> bytes:
    """A part that sets an option (``gradcam``, ``threshold``): text, or now and then a file."""
    name = draw(st.sampled_from([b"gradcam", b"threshold"]))
    value = draw(flags if name == b"gradcam" else thresholds)
    filename = draw(mostly(st.none(), any_filename))
    return _disposition(name, filename) + b"\r\n\r\n" + str(value).encode("utf-8", "surrogatepass")


@st.composite
def hostile_parts(draw: st.DrawFn) -> bytes:
    """A part with any name, any headers (or none, or garbage) and any bytes."""
    name = draw(st.one_of(st.sampled_from([b"other", b"", b"file"]), st.binary(max_size=10)))
    headers = draw(st.lists(st.sampled_from([_disposition(name, draw(any_filename)), b"Content-Type: image/png",
                                             b"X: y", b"garbage", b""]), max_size=3))
    return b"\r\n".join(headers) + b"\r\n\r\n" + draw(st.binary(max_size=64))


@st.composite
def form_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A multipart form's Content-Type and body: image parts, option parts and now and then hostile ones,
    up to a few or over a thousand, in any order; its framing intact or broken (no closing boundary,
    junk around it, cut short, bare line feeds), its Content-Type right or wrong."""
    boundary = draw(st.text(alphabet=TOKEN, min_size=1, max_size=30))
    parts = draw(mostly(st.lists(file_parts(), min_size=1, max_size=5), st.just([]), one_in=8)) + \
        draw(st.lists(option_parts(), max_size=2)) + \
        draw(mostly(st.just([]), st.lists(hostile_parts(), min_size=1, max_size=3)))
    parts = draw(st.permutations(parts))
    if parts and draw(now_and_then(15)):  # past Starlette's limit of 1000 fields or files
        parts = parts[:1] * draw(st.sampled_from([999, 1001, 1100]))
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--\r\n"
    broken = draw(mostly(st.just("intact"), st.sampled_from(["unclosed", "junk", "cut", "no parts", "lf only"])))
    if broken == "unclosed":
        body = body[:-len(delimiter) - 4]
    elif broken == "junk":
        body = draw(st.binary(max_size=16)) + body + draw(st.binary(max_size=16))
    elif broken == "cut":
        body = body[:draw(st.integers(0, len(body)))]
    elif broken == "no parts":
        body = delimiter + b"--\r\n"
    elif broken == "lf only":
        body = body.replace(b"\r\n", b"\n")
    kind = draw(mostly(st.just("multipart/form-data"), st.sampled_from(["Multipart/Form-Data", "MULTIPART/FORM-DATA"])))
    params = draw(mostly(st.sampled_from([f"; boundary={boundary}", f'; boundary="{boundary}"']),
                         st.sampled_from([f";boundary={boundary}", f"; boundary={boundary}; charset=latin-1", "",
                                          "; boundary=", "; boundary=other"])))
    return kind + params, body


header_values = st.binary(max_size=60).map(  # what HTTP allows in a value: no control bytes but tab, no edges
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127).strip(b" \t"))
extra_headers = st.dictionaries(
    st.one_of(st.sampled_from(["X-API-Key", "Accept", "Accept-Encoding", "Content-Encoding", "Cookie", "Origin",
                               "Authorization", "User-Agent", "X-Forwarded-For", "Range"]),
              st.text(alphabet=TOKEN, min_size=1, max_size=20)).filter(lambda k: k.lower() not in FRAMING),
    header_values, max_size=3)
raw_content_types = st.one_of(
    st.none(),
    st.sampled_from(["", "text/plain", "application/x-www-form-urlencoded", "multipart/mixed; boundary=x",
                     "image/png", "application/octet-stream", "multipart/form-data", "application/json", "*/*",
                     "application/json-patch+json", "multipart/form-data; boundary=\"unclosed", "x/y; ;;; ="]),
    header_values.map(lambda b: b.decode("latin-1")))


@dataclass
class Sent:
    """One request as the fuzzer sends it."""

    method: str
    content_type: str | None
    body: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    chunked: bool = False  # sent as chunks, without Content-Length

    def __repr__(self) -> str:  # what a failure shows: enough to send it again
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"...(%d bytes)" % len(self.body)
        return (f"Sent({self.method} {self.content_type!r}, headers={self.headers!r}, chunked={self.chunked}, "
                f"body={body!r})")


def sent(body: st.SearchStrategy[bytes], content_types: st.SearchStrategy[str | None],
         methods: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Sent]:
    """Requests of ``methods`` (POST by default) with ``body`` under ``content_types``, a few extra headers,
    a fifth of them chunked."""
    methods = st.just("POST") if methods is None else methods
    return st.builds(Sent, methods, content_types, body, extra_headers, now_and_then(5))


# --- the guard's count of JSON's nesting ------------------------------------------------------------------------


def parsed_depth(value: Any) -> int:
    if isinstance(value, (list, dict)):
        return 1 + max(map(parsed_depth, value.values() if isinstance(value, dict) else value), default=0)
    return 0


tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\:,ab \u00e9\U0001f600\ud800'), max_size=12)
tricky_json = st.recursive(st.one_of(json_scalars, tricky_text), lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(tricky_text, inner, max_size=3), max_leaves=20)


# A string across the guard's 1 MB chunks, its brackets not counted, then nesting after it.
@example(value=["[" * 1_500_000, [[[]]]], encoding="utf-8", ensure_ascii=True)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(value=tricky_json, encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]),
       ensure_ascii=st.booleans())
def test_the_guard_counts_nesting_as_the_parser_finds_it(value: Any, encoding: str, ensure_ascii: bool) -> None:
    body = json.dumps(value, ensure_ascii=ensure_ascii).encode(encoding, "surrogatepass")
    depth = parsed_depth(value)
    assert json_depth(body, limit=100) == depth
    assert (json_depth(body, limit=1) > 1) == (depth > 1)  # past the limit, counting stops, still past it


# --- the server, and what every answer must be ------------------------------------------------------------------


@dataclass
class Fuzzed:
    """The server under fuzzing, a client for it, and how far its log has been read."""

    server: Any  # load_test.Server
    client: httpx.Client
    statuses: Counter[int] = field(default_factory=Counter)  # of the answers to the fuzzing
    log_read: int = 0

    def new_log(self) -> str:
        text = self.server.log.read_text(errors="replace")
        new, self.log_read = text[self.log_read:], len(text)
        return new

    def send(self, request: Sent) -> None:
        """Send ``request``; its answer must be a 2xx with images or a 4xx that says what was wrong, and the
        server's log must have no traceback."""
        headers = {**request.headers}
        if request.content_type is not None:
            headers["Content-Type"] = request.content_type.encode("latin-1")
        content: Any = request.body
        if request.chunked:
            content = iter([request.body[:len(request.body) // 2], request.body[len(request.body) // 2:]])
        response = self.client.request(request.method, "/predict", content=content, headers=headers)
        self.statuses[response.status_code] += 1
        check_answer(response)
        log = self.new_log()
        assert "Traceback" not in log, f"the server's log after {request!r}:\n{log[-4000:]}"


def check_answer(response: httpx.Response) -> None:
    """A 2xx that carries the images, or a 4xx whose JSON body says what was wrong."""
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:1000]}"
    body = response.json()  # every answer of POST /predict is JSON, a refusal too
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), body
    else:
        assert status == 200 and body["images"] and all("p_real" in image for image in body["images"]), body


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[Fuzzed]:
    ckpt = make_checkpoint(tmp_path_factory.mktemp("fuzz") / "tiny.ckpt")
    with lt.running_server(ckpt, OVERRIDES) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        state = Fuzzed(server, client)
        state.new_log()  # the start-up, read
        yield state
        print(f"\n{state.statuses.total()} requests sent to POST /predict, by status: {sorted(state.statuses.items())}")


def still_serving(fuzzed: Fuzzed) -> None:
    assert fuzzed.server.alive(), fuzzed.server.log.read_text()[-3000:]
    log = fuzzed.new_log()
    assert "Traceback" not in log, log[-4000:]


# --- the fuzzing ------------------------------------------------------------------------------------------------


# The JSON requests that answered 500, with a traceback in the log, before this test: run first, every time.
JSON_WERE_500 = {
    "nested past Python's recursion limit: RecursionError in the guard's json.loads": b"[" * 100_000,
    "nested 900 deep: parsed, then a RecursionError pickling it for the worker":
        b'{"image": "AAAA", "name": ' + b"[" * 900 + b"]" * 900 + b"}",
    "an integer threshold past float's range: OverflowError in float()":
        b'{"image": "AAAA", "threshold": 1' + b"0" * 400 + b"}",
    "a lone surrogate in a name: the refusal naming it could not be encoded as UTF-8":
        b'{"image": "AAAA", "name": "\\ud800"}',
    "the same name on a good image": json.dumps({"image": _b64(IMAGES["a.png"]), "name": "\ud800"}).encode(),
}


def were_500(test: Any) -> Any:
    for body in JSON_WERE_500.values():
        test = example(request=Sent("POST", "application/json", body))(test)
    return test


@were_500
@FUZZ
@given(request=sent(json_bodies(), json_content_types))
def test_any_json_body_gets_a_2xx_or_a_4xx_that_says_why(fuzzed, request: Sent) -> None:
    fuzzed.send(request)


def _form(*parts: tuple[str, str | None, bytes]) -> bytes:
    return b"".join(f'--b\r\nContent-Disposition: form-data; name="{name}"'.encode()
                    + (f'; filename="{filename}"'.encode() if filename else b"") + b"\r\n\r\n" + data + b"\r\n"
                    for name, filename, data in parts) + b"--b--\r\n"


# Before this test: a 500 for a media type not in lower case (LitServe read the form as JSON), and for a file
# part past 1 MB (Starlette spooled it to a temporary file, which LitServe could not pickle for the worker).
@example(form=("Multipart/Form-Data; boundary=b", _form(("file", "a.png", IMAGES["a.png"]))), headers={},
         chunked=False)
@example(form=("multipart/form-data; boundary=b", _form(("file", "big.png", BIG_PNG))), headers={}, chunked=False)
@FUZZ
@given(form=form_bodies(), headers=extra_headers, chunked=st.booleans())
def test_any_multipart_body_gets_a_2xx_or_a_4xx_that_says_why(fuzzed, form: tuple[str, bytes],
                                                              headers: dict[str, bytes], chunked: bool) -> None:
    fuzzed.send(Sent("POST", form[0], form[1], headers, chunked))


@FUZZ
@given(request=st.one_of(
    sent(st.binary(max_size=2000), raw_content_types, st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE"])),
    sent(st.sampled_from([b"\0" * (CAP - 1), b"\0" * CAP, b"\0" * (CAP + 1)]),  # at and over max_upload_mb
         st.sampled_from(["application/json", "multipart/form-data; boundary=x"]))))
def test_any_bytes_under_any_content_type_get_a_4xx_that_says_why(fuzzed, request: Sent) -> None:
    fuzzed.send(request)


def test_the_server_is_still_up_and_clean_after_the_fuzzing(fuzzed) -> None:
    still_serving(fuzzed)
    if fuzzed.statuses.total() >= 3 * EXAMPLES:  # after the fuzzing above (not when this test runs alone)
        # The fuzzing reached the model and every kind of refusal, not only the guard in front of them.
        assert {200, 400, 405, 413, 415, 422} <= set(fuzzed.statuses), fuzzed.statuses
    good = fuzzed.client.post("/predict", files={"file": ("b.jpg", IMAGES["b.jpg"], "image/jpeg")})
    assert good.status_code == 200 and good.json()["images"][0]["name"] == "b.jpg"


# Framing no well-behaved client sends (uvicorn's parser refuses most of it before the guard sees it), or a
# client gone before its body was sent: answered with a 4xx, or the connection closed, and nothing else.
RAW = [
    b"Content-Type: application/json\r\nContent-Length: abc\r\n\r\n{}",
    b"Content-Type: application/json\r\nContent-Length: -5\r\n\r\n{}",
    b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
    b"Content-Type: application/json\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"Content-Type: application/json\x00\r\nContent-Length: 2\r\n\r\n{}",
    b"Content-Type: application/json\r\n  ; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}",
    b"X-Junk: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}",  # then the client stops sending
    b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 5000\r\n\r\n--x\r\nContent-Disposition: "
    b'form-data; name="file"; filename="a"\r\n\r\nabc',
]


@pytest.mark.parametrize("head", RAW, ids=range(len(RAW)))
def test_broken_framing_is_refused_or_dropped(fuzzed, head: bytes) -> None:
    port = int(fuzzed.server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head)
        raw.shutdown(socket.SHUT_WR)  # nothing more comes
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:500]
    still_serving(fuzzed)


# --- shutdown ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stop_signal", "whole_group"), [
    (signal.SIGTERM, False),  # docker stop, kill: the main process only
    (signal.SIGINT, True),  # Ctrl+C in a terminal: every process of the server
    (signal.SIGTERM, True),  # systemd: every process of the service
], ids=["SIGTERM", "Ctrl+C", "SIGTERM to all"])
def test_shutdown_prints_no_traceback_from_any_process(tmp_path, stop_signal: int, whole_group: bool) -> None:
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    with lt.running_server(ckpt, ["device=cpu"], stop_signal=stop_signal, whole_group=whole_group) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        # Scored (the worker has made what it cleans up at exit), refused, and waiting for more.
        check_answer(client.post("/predict", files={"file": ("b.jpg", IMAGES["b.jpg"])}))
        check_answer(client.post("/predict", json={"image": "AAAA"}))
    log = server.output
    assert server.process.returncode == 0, log[-3000:]
    assert server.leftover == [], f"processes left running: {server.leftover}"
    # No traceback (nor the bare "KeyboardInterrupt" line that ends one); no worker killed for being slow to stop,
    # nor the warning of multiprocessing's resource tracker about what a killed one left behind.
    for sign in ("Traceback", "\nKeyboardInterrupt\n", "leaked semaphore", "Did not terminate gracefully"):
        assert sign not in log, log[-4000:]
    assert "Shutting down LitServe" in log


# "Serving " is logged just before LitServe starts its manager, workers and HTTP servers: a stop at once lands
# in the manager's fork, one 0.3 s later in the workers' or the HTTP servers' start (the old code lost about
# half of the first: a manager process left running, or the stop swallowed and the server going on).
@pytest.mark.parametrize(("ready", "delay"), [("Serving ", 0.0), ("Serving ", 0.3),
                                              ("Application startup complete", 0.0)],
                         ids=["starting", "starting-later", "serving"])
def test_a_stop_sent_twice_as_timeout_sends_it_prints_no_traceback(tmp_path, ready: str, delay: float) -> None:
    """``timeout`` (and many supervisors) signal the process and then its whole group: the main process
    gets the stop twice, here while LitServe starts its workers or once it serves. Neither the repeat nor
    the manager process ending first may print a traceback; every process ends."""
    port = lt.free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), f"port={port}", "device=cpu",
                                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while ready not in log.read_text(errors="replace") and process.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.005)
        time.sleep(delay)
        os.kill(process.pid, signal.SIGTERM)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
        deadline = time.monotonic() + 15  # multiprocessing's resource tracker exits just after the server
        while (left := lt.group_members(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert left == [], f"processes left running: {left}\n{text[-3000:]}"
    assert "Traceback" not in text and "\nKeyboardInterrupt\n" not in text, text[-4000:]
    assert "No ckpt_path: using the bundled model" in text
