"""serve.py in process: LitServe's test utilities (``wrap_litserve_start`` and Starlette's
``TestClient``) in front of the real server, its workers spawned as ``serve.py`` spawns them.
Every response shape and every refusal, with numbers equal to predict.py's for the same files and
model file (a checkpoint, its ONNX export, a forest)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litserve.utils import wrap_litserve_start
from omegaconf import DictConfig
from PIL import Image
from starlette.datastructures import FormData, UploadFile

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient; httpx works the same
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from cifake.core.errors import ConfigError
from cifake.data.decode import decode_image
from cifake.jobs import predict as predict_job
from cifake.jobs import serve as serve_job
from cifake.serving.api import Job
from cifake.serving.uploads import Limits, Rejected, Upload, WarnAt, decode
from tests.helpers import ROOT
from tests.helpers.config import compose_job
from tests.helpers.images import write_image
from tests.helpers.models import export_tiny, fit_tiny_forest
from tests.helpers.runner import load_test_module

bomb_png = load_test_module().bomb_png  # the same hostile PNG the load test sends

KEY_ENV, KEY = "CIFAKE_TEST_API_KEY", "s3cret-key"
# Small limits, so that the refusals are cheap to provoke (scoring in float32, the default, as predict.py).
SMALL = ["max_upload_mb=1", "max_images=4", "max_image_pixels=1000000", "device=cpu", "gradcam_scale=8"]


def make_images(folder: Path) -> list[str]:
    """Readable images of every kind an upload may be; their names."""
    rng = np.random.default_rng(3)
    for i in range(3):
        write_image(folder / f"{i}.jpg", rng)
    yy, xx = np.mgrid[0:480, 0:640]
    photo = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy) % 256], axis=-1)
    photo = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(folder / "photo.jpg", quality=90)
    write_image(folder / "grey.png", rng, size=48, mode="L", fmt="PNG")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)).save(folder / "rgba.png")
    frames = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert("P") for _ in range(2)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "flat.png")
    write_image(folder / "tiny.webp", rng, size=8, fmt="WEBP")
    return sorted(p.name for p in folder.iterdir())


def predict_rows(tmp: Path, name: str, model: Path, folder: Path, *overrides: str) -> dict[str, dict[str, Any]]:
    """predict.py's rows for every file in ``folder``, by file name."""
    cfg = compose_job("predict", tmp / name, [f"ckpt_path={model}", f"inputs={folder}", "progress_bar=false",
                                              "device=cpu", *overrides])
    predict_job.run(cfg)
    rows = [json.loads(line) for line in (tmp / name / "predictions.jsonl").read_text().splitlines()]
    return {Path(r["path"]).name: r for r in rows}


def serve_cfg(out: Path, model: Path, *overrides: str) -> DictConfig:
    return compose_job("serve", out, [f"ckpt_path={model}", *overrides])


@contextmanager
def serving(cfg: DictConfig) -> Iterator[TestClient]:
    """The server ``cfg`` describes, its inference worker running, and a client for it."""
    server = serve_job.build(cfg)
    with wrap_litserve_start(server) as started, TestClient(started.app) as client:
        deadline = time.monotonic() + 180
        while client.get("/health").status_code != 200:  # the worker imports torch and opens the model first
            assert time.monotonic() < deadline, "the inference worker did not start"
            time.sleep(0.2)
        yield client


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("serve")
    ckpt, onnx_path, _ = export_tiny(tmp)
    folder = tmp / "images"
    folder.mkdir()
    names = make_images(folder)
    # An unsure band around the threshold that holds a few of the images, not all: from the ONNX model's p_real.
    p = sorted(r["p_real"] for r in predict_rows(tmp, "p_plain", onnx_path, folder).values())
    band = [round(min(0.5, p[2]) - 1e-3, 6), round(max(0.5, p[4]) + 1e-3, 6)]
    return {"tmp": tmp, "ckpt": ckpt, "onnx": onnx_path, "folder": folder, "names": names, "band": band,
            "bytes": {n: (folder / n).read_bytes() for n in names},
            # batch_size=1: each image alone through the network, as a request of one image is scored
            "ckpt_rows": predict_rows(tmp, "p_ckpt", ckpt, folder, "gradcam=true", "batch_size=1"),
            "onnx_rows": predict_rows(tmp, "p_onnx", onnx_path, folder, f"unsure_band=[{band[0]},{band[1]}]")}


@pytest.fixture(scope="module")
def client(files) -> Iterator[TestClient]:
    """The checkpoint, batching up to 8 requests that come within 50 ms."""
    with serving(serve_cfg(files["tmp"] / "s_ckpt", files["ckpt"], *SMALL, "max_batch_size=8",
                           "batch_timeout=0.05")) as c:
        yield c


@pytest.fixture(scope="module")
def onnx_client(files) -> Iterator[TestClient]:
    """The ONNX export with an unsure band, behind an API key, without batching."""
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, KEY)
    try:
        with serving(serve_cfg(files["tmp"] / "s_onnx", files["onnx"], *SMALL, "max_batch_size=1",
                               f"api_key_env={KEY_ENV}", f"unsure_band=[{files['band'][0]},{files['band'][1]}]",
                               "gradcam=true")) as c:
            yield c
    finally:
        mp.undo()


def upload(files, *names: str, **fields: str) -> dict[str, Any]:
    return {"files": [("file", (n, files["bytes"][n], "application/octet-stream")) for n in names], "data": fields}


def ok(response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def same_as_predict(result: dict[str, Any], row: dict[str, Any], exact: bool = False) -> None:
    """The server's answer is predict.py's row: exactly where both put the image through the network in
    the same batch; else within float32 rounding (a CPU's convolutions round differently at different
    batch sizes, by up to ~1e-6 here: predict.py at batch_size=1 and 256 differ as much)."""
    if exact:
        assert (result["p_real"], result["p_fake"]) == (row["p_real"], row["p_fake"])
    assert result["p_real"] == pytest.approx(row["p_real"], abs=1e-5)
    assert result["p_fake"] == pytest.approx(row["p_fake"], abs=1e-5)
    assert result["label"] == row["predicted"] and result["threshold"] == row["threshold"]


def test_an_upload_decodes_to_the_pixels_predict_reads_from_its_file(files) -> None:
    limits = Limits(max_images=4, max_image_pixels=10**6, formats=("JPEG", "PNG", "WEBP", "GIF"))
    warn_at = WarnAt(max_scale=4, max_aspect=1.2, min_colours=64)
    for name in files["names"]:
        decoded = decode(Upload(name, files["bytes"][name]), 32, "bicubic", limits, warn_at)
        pixels, conversions = decode_image(files["folder"] / name, 32, "bicubic")
        np.testing.assert_array_equal(decoded.pixels, pixels)
        assert decoded.conversions == conversions


# --- the page, health and info ----------------------------------------------------------------------------------


def test_the_page_health_and_info(client, files) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'id="drop"' in html and 'type="file"' in html and "fetch(\"predict\"" in html
    # Nothing from elsewhere: no CDN, no web font, no external script or style sheet.
    assert "http://" not in html and "https://" not in html and "@import" not in html and "@font-face" not in html
    assert client.get("/health").text == "ok"
    info = ok(client.get("/info"))["model"]
    assert info["model"]["file"] == "tiny.ckpt" and info["model"]["kind"] == "checkpoint"
    assert info["model"]["image_size"] == 32 and info["gradcam"] == {"available": True, "default": False}
    assert info["limits"]["max_images"] == 4 and info["api_key_header"] is None
    # What computes the answers: float32 by default, on the device the workers run on.
    assert info["model"]["precision"] == "32-true" and info["model"]["device"] == "cpu"


# --- response shapes --------------------------------------------------------------------------------------------


def test_one_image_per_request_gives_predicts_numbers(client, files) -> None:
    for name in files["names"]:
        answer = ok(client.post("/predict", **upload(files, name)))
        assert answer["model"]["file"] == "tiny.ckpt" and answer["model"]["kind"] == "checkpoint"
        assert len(answer["model"]["sha256"]) == 16 and answer["model"]["resample"] == "bicubic"
        assert answer["model"]["precision"] == "32-true" and answer["model"]["device"] == "cpu"
        (result,) = answer["images"]
        same_as_predict(result, files["ckpt_rows"][name], exact=True)  # one request at a time: batches of one
        assert result["name"] == name and result["gradcam"] is None and result["unsure_band"] is None
        with Image.open(files["folder"] / name) as im:
            assert (result["input"]["width"], result["input"]["height"]) == im.size
            assert result["input"]["mode"] == im.mode and result["input"]["format"] == im.format
        assert result["input"]["bytes"] == len(files["bytes"][name])
        if im.size == (32, 32):
            assert result["resized"] is None
        else:
            assert result["resized"] == {"from": list(im.size), "to": [32, 32], "resample": "bicubic"}


def test_several_images_in_one_request_keep_their_order(client, files) -> None:
    names = ["photo.jpg", "0.jpg", "grey.png", "1.jpg"]
    answer = ok(client.post("/predict", **upload(files, *names)))
    assert [r["name"] for r in answer["images"]] == names
    for result in answer["images"]:
        same_as_predict(result, files["ckpt_rows"][result["name"]])


def test_json_with_base64_one_or_many(client, files) -> None:
    b64 = {n: base64.b64encode(files["bytes"][n]).decode() for n in files["names"]}
    one = ok(client.post("/predict", json={"image": b64["photo.jpg"], "name": "photo.jpg"}))["images"]
    assert [r["name"] for r in one] == ["photo.jpg"]
    same_as_predict(one[0], files["ckpt_rows"]["photo.jpg"])
    grey = {"data": f"data:image/png;base64,{b64['grey.png']}", "name": "grey.png"}  # a data URL, as browsers make
    many = ok(client.post("/predict", json={"images": [b64["0.jpg"], grey]}))["images"]
    assert [r["name"] for r in many] == ["image-0", "grey.png"]
    same_as_predict(many[0], files["ckpt_rows"]["0.jpg"])
    same_as_predict(many[1], files["ckpt_rows"]["grey.png"])


def test_gradcam_overlay_is_predicts_png(client, files) -> None:
    for name in ("0.jpg", "photo.jpg"):
        (result,) = ok(client.post("/predict", **upload(files, name, gradcam="true")))["images"]
        head, _, data = result["gradcam"].partition(",")
        assert head == "data:image/png;base64"
        with Image.open(io.BytesIO(base64.b64decode(data))) as served, \
                Image.open(files["ckpt_rows"][name]["gradcam"]) as written:
            assert served.format == "PNG" and served.size == (2 * 32 * 8, 32 * 8) == written.size
            difference = np.abs(np.asarray(served, dtype=int) - np.asarray(written, dtype=int))
            assert difference.max() <= 1  # the same overlay; Grad-CAM's batch may differ by a rounding


def test_a_request_may_set_its_threshold(client, files) -> None:
    (result,) = ok(client.post("/predict", **upload(files, "0.jpg", threshold="0.999")))["images"]
    assert result["threshold"] == 0.999 and result["label"] == ("REAL" if result["p_real"] > 0.999 else "FAKE")
    (result,) = ok(client.post("/predict", json={"image": base64.b64encode(files["bytes"]["0.jpg"]).decode(),
                                                 "threshold": 0.0}))["images"]
    assert result["label"] == "REAL" and result["threshold"] == 0.0


def test_warnings_name_what_the_model_has_not_seen(client, files) -> None:
    answer = ok(client.post("/predict", **upload(files, "photo.jpg", "grey.png", "rgba.png", "anim.gif")))
    warned = {r["name"]: " | ".join(r["warnings"]) for r in answer["images"]}
    assert "640x480 is 20x the 32x32" in warned["photo.jpg"] and "not square (640x480)" in warned["photo.jpg"]
    assert "mode L, not an RGB photo" in warned["grey.png"]
    assert "transparency dropped" in warned["rgba.png"] and "2 frames: the first was used" in warned["anim.gif"]
    (flat,) = ok(client.post("/predict", **upload(files, "flat.png")))["images"]
    assert "only 1 distinct colour at 32x32" in " ".join(flat["warnings"])
    (tiny,) = ok(client.post("/predict", **upload(files, "tiny.webp")))["images"]
    assert "smaller than the 32x32" in " ".join(tiny["warnings"])
    (plain,) = ok(client.post("/predict", **upload(files, "0.jpg")))["images"]
    assert plain["warnings"] == []


def test_concurrent_requests_are_batched_without_mixing_answers(client, files) -> None:
    names = files["names"] * 2
    bad = {3: b"", 7: b"not an image at all", 11: files["bytes"]["0.jpg"][:200]}

    def send(i: int) -> tuple[int, Any]:
        data = bad.get(i, files["bytes"][names[i]])
        response = client.post("/predict", files=[("file", (names[i], data, "image/jpeg"))])
        return response.status_code, response.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(len(names))))
    for i, (status, body) in enumerate(answers):
        if i in bad:
            assert status == 422 and names[i] in body["error"]
        else:
            assert status == 200, body
            same_as_predict(body["images"][0], files["ckpt_rows"][names[i]])


# --- refusals ---------------------------------------------------------------------------------------------------


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def ppm() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "PPM")
    return buffer.getvalue()


def one(name: str, data: bytes) -> dict[str, Any]:
    return {"files": [("file", (name, data, "application/octet-stream"))]}


BAD_UPLOADS = {
    "empty": (one("empty.png", b""), 422, "empty.png: empty file (0 bytes)"),
    "text": (one("notes.txt", b"just some notes\n"), 422, "notes.txt: not an image in an accepted format"),
    "truncated jpeg": (one("half.jpg", truncated_jpeg()), 422, "half.jpg: cannot be decoded, damaged or truncated"),
    "decompression bomb": (one("bomb.png", bomb_png()), 413, "bomb.png: refused as a decompression bomb"),
    "many pixels": (one("big.png", bomb_png(2000, 1000)), 413, "2000x1000 = 2,000,000 pixels, over the limit"),
    "over the size cap": (one("huge.jpg", b"\xff" * (3 * 2**19)), 413, "upload too large: 1.5 MB, over the cap of 1.0"),
    "too many images": ({"files": [("file", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(5)]}, 413,
                        "too many images: 5 in one request, at most 4 (max_images)"),
    "unaccepted format": (one("image.ppm", ppm()), 422, "image.ppm: not an image in an accepted format (JPEG, PNG"),
    "unknown field": ({"files": [("other", ("a.jpg", b"x", "image/jpeg"))]}, 400, "unknown form field 'other'"),
    "no image": ({"headers": {"Content-Type": "multipart/form-data; boundary=x"},
                  "content": b'--x\r\nContent-Disposition: form-data; name="gradcam"\r\n\r\ntrue\r\n--x--\r\n'},
                 400, "no image in the request"),
    "url-encoded form": ({"data": {"file": "photo.jpg"}}, 415, "'application/x-www-form-urlencoded' is not accepted"),
    "a field, not a file": ({"data": {"file": "photo.jpg"}, "files": [("gradcam", (None, b"true"))]}, 400,
                            "field 'file' #1 is text, not a file"),
    "bad flag": ({"data": {"gradcam": "maybe"}, **one("0.jpg", b"x")}, 400, "gradcam='maybe' is not a yes/no"),
    "bad threshold": ({"data": {"threshold": "2"}, **one("0.jpg", b"x")}, 400, "threshold='2' must lie in [0, 1]"),
    "not json": ({"content": b"{broken", "headers": {"Content-Type": "application/json"}}, 400,
                 "the body is not valid JSON"),
    "json list": ({"json": ["abc"]}, 400, "the JSON body must be an object"),
    "bad base64": ({"json": {"image": "not base64 at all!"}}, 400, "image is not valid base64"),
    "unknown key": ({"json": {"picture": "AAAA"}}, 400, "unknown key 'picture'"),
    "both keys": ({"json": {"image": "AAAA", "images": ["AAAA"]}}, 400, 'send either "image"'),
    "plain text body": ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
                        "content type 'text/plain' is not accepted"),
    "no content type": ({"content": b"hello", "headers": {"Content-Type": ""}}, 415, "content type 'none'"),
    "multipart without boundary": ({"content": b"garbage", "headers": {"Content-Type": "multipart/form-data"}}, 400,
                                   "the multipart body cannot be parsed: Missing boundary"),
    "too many parts": ({"content": b"".join(b'--x\r\nContent-Disposition: form-data; name="gradcam"\r\n\r\n1\r\n'
                                            for _ in range(1001)) + b"--x--\r\n",
                        "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 400,
                       "the multipart body cannot be parsed: Too many fields"),
    # Each of the next three was a 500 with a traceback in the log (tests/test_serve_fuzz.py fuzzes for more).
    "json nested deep": ({"content": b'{"image": "AAAA", "name": ' + b"[" * 900 + b"]" * 900 + b"}",
                          "headers": {"Content-Type": "application/json"}}, 400,
                         "the JSON body nests more than 8 levels deep (max_json_depth)"),
    "threshold past a float": ({"json": {"image": "AAAA", "threshold": 10**400}}, 400,
                               "threshold=1" + "0" * 59 + "... must lie in [0, 1]"),
    "a name that is not unicode": ({"content": b'{"image": "AAAA", "name": "\\ud800"}',
                                    "headers": {"Content-Type": "application/json"}}, 422,
                                   "\\ud800: not an image in an accepted format"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_every_bad_upload_is_a_4xx_that_names_the_problem(client, files, case: str) -> None:
    request, status, reason = BAD_UPLOADS[case]
    response = client.post("/predict", **request)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    # ... and the server goes on answering.
    same_as_predict(ok(client.post("/predict", **upload(files, "0.jpg")))["images"][0], files["ckpt_rows"]["0.jpg"])


def test_media_types_are_read_in_any_case(client, files) -> None:
    # Media types are case-insensitive; LitServe read a form whose type was not in lower case as JSON (a 500).
    form = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"0.jpg\"\r\n\r\n" + \
        files["bytes"]["0.jpg"] + b"\r\n--b--\r\n"
    answer = ok(client.post("/predict", content=form, headers={"Content-Type": "Multipart/Form-Data; boundary=b"}))
    same_as_predict(answer["images"][0], files["ckpt_rows"]["0.jpg"])
    body = json.dumps({"image": base64.b64encode(files["bytes"]["0.jpg"]).decode()}).encode()
    answer = ok(client.post("/predict", content=body, headers={"Content-Type": "APPLICATION/JSON; charset=utf-8"}))
    same_as_predict(answer["images"][0], files["ckpt_rows"]["0.jpg"])


def test_a_chunked_upload_past_the_cap_is_cut_off(client) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\0" * 2**16  # 2.5 MB in all, with no Content-Length

    response = client.post("/predict", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "more than 1.0 MB" in response.json()["error"]
    assert client.get("/health").text == "ok"


# --- ONNX, the unsure band and the API key ----------------------------------------------------------------------


def test_onnx_behind_a_key_gives_predicts_numbers_and_unsure(onnx_client, files) -> None:
    assert onnx_client.post("/predict", **upload(files, "0.jpg")).status_code == 401
    wrong = onnx_client.post("/predict", **upload(files, "0.jpg"), headers={"X-API-Key": "guess"})
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]
    assert onnx_client.get("/health").status_code == 200 and onnx_client.get("/").status_code == 200
    key = {"X-API-Key": KEY}
    labels = set()
    for name in files["names"]:
        (result,) = ok(onnx_client.post("/predict", **upload(files, name), headers=key))["images"]
        same_as_predict(result, files["onnx_rows"][name])
        assert result["unsure_band"] == files["band"] and result["gradcam"] is None
        assert any("no Grad-CAM: it needs a PyTorch checkpoint" in w for w in result["warnings"])
        labels.add(result["label"])
    assert "UNSURE" in labels and labels - {"UNSURE"}  # the band holds some images, not all
    outside = onnx_client.post("/predict", **upload(files, "0.jpg", threshold=str(files["band"][1] + 0.01)),
                               headers=key)
    assert outside.status_code == 400 and "outside the model's unsure band" in outside.json()["error"]
    info = ok(onnx_client.get("/info"))["model"]
    assert info["api_key_header"] == "X-API-Key" and info["gradcam"]["available"] is False
    assert (info["model"]["precision"], info["model"]["device"]) == ("32-true", "cpu")  # onnxruntime, float32


# --- a forest, through the API's own methods (no worker process) ------------------------------------------------


def test_a_forest_is_served_with_predicts_numbers(files, tmp_path_factory, monkeypatch) -> None:
    # setup() sets Pillow's process-wide bomb guard, as a worker should: undone after this test.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    tmp = tmp_path_factory.mktemp("forest")
    forest = fit_tiny_forest(tmp)
    rows = predict_rows(tmp, "p_forest", forest, files["folder"])
    api = serve_job.build(serve_cfg(tmp / "s_forest", forest, *SMALL)).lit_api
    api.setup("cpu")
    assert Image.MAX_IMAGE_PIXELS == 1000000  # max_image_pixels, set explicitly
    names = ["0.jpg", "photo.jpg", "grey.png"]
    form = FormData([("file", UploadFile(io.BytesIO(files["bytes"][n]), filename=n)) for n in names])
    job = api.decode_request(form)
    assert isinstance(job, Job)
    answer = api.encode_response(api.predict(job))
    assert answer["model"]["kind"] == "forest" and [r["name"] for r in answer["images"]] == names
    assert (answer["model"]["precision"], answer["model"]["device"]) == ("32-true", "cpu")
    for result in answer["images"]:
        same_as_predict(result, rows[result["name"]])
    refused = api.encode_response(api.predict(api.decode_request(FormData([("file", UploadFile(
        io.BytesIO(b""), filename="e.png"))]))))
    assert refused.status_code == 422 and b"empty file" in refused.body
    assert isinstance(api.decode_request(FormData()), Rejected)


def test_bf16_is_served_when_asked_and_every_answer_says_so(files, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # setup() sets it, as a worker should
    server = serve_job.build(serve_cfg(tmp_path, files["ckpt"], *SMALL, "scoring.precision=bf16-mixed"))
    assert server.model_metadata["model"]["precision"] == "bf16-mixed"  # /info
    api = server.lit_api
    api.setup("cpu")
    names = ["0.jpg", "photo.jpg"]
    form = FormData([("file", UploadFile(io.BytesIO(files["bytes"][n]), filename=n)) for n in names])
    answer = api.encode_response(api.predict(api.decode_request(form)))
    assert (answer["model"]["precision"], answer["model"]["device"]) == ("bf16-mixed", "cpu")
    for result in answer["images"]:  # bf16 keeps 8 bits of mantissa: close to float32, not equal
        assert result["p_real"] == pytest.approx(files["ckpt_rows"][result["name"]]["p_real"], abs=0.05)


# --- mistakes at startup ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["host=localhost"], "host='localhost'; LitServe listens on 127.0.0.1 or 0.0.0.0 or ::"),
    (["port=80"], "port=80 must be a number from 1024 to 65535"),
    (["workers=0"], "workers=0 must be a whole number of at least 1"),
    (["batch_timeout=30"], "batch_timeout=30 must be at least 0 and below request_timeout=30"),
    (["max_upload_mb=0"], "max_upload_mb=0 must be positive"),
    (["formats=[JPEG,NOPE]"], "formats=['JPEG', 'NOPE']: ['NOPE']"),
    ([f"api_key_env={KEY_ENV}_UNSET"], f"the environment variable {KEY_ENV}_UNSET is not set"),
    (["threshold=1.5"], "threshold=1.5 must lie in [0, 1]"),
    (["unsure_band=[0.6,0.7]"], "unsure band [0.6, 0.7] must satisfy"),
    (["device=tpu"], "device='tpu'"),
    (["scoring.precision=auto"], "scoring.precision='auto'; choose 32-true (float32 on every device"),
    (["resample=cubic"], "resample='cubic'"),
    (["gradcam_layer=net.nowhere"], "Grad-CAM layer 'net.nowhere' is not in this model"),
])
def test_mistakes_are_refused_before_anything_starts(files, tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError) as raised:
        serve_job.build(serve_cfg(tmp_path, files["ckpt"], *overrides))
    assert message in str(raised.value)


def test_a_port_in_use_is_one_error_line(files, tmp_path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_job.check_port_free("127.0.0.1", port)


def test_serve_py_reports_a_missing_model_in_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "serve.py"), f"ckpt_path={tmp_path / 'none.ckpt'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "error: ckpt_path=" in proc.stderr and "Traceback" not in proc.stderr
    # Without ckpt_path it serves the bundled model (tests/test_bundled.py); a port it cannot use is one line.
    busy = subprocess.run([sys.executable, str(ROOT / "serve.py"), "port=80000", f"hydra.run.dir={tmp_path / 'run2'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2 and "error: port=80000" in busy.stderr and "Traceback" not in busy.stderr


def test_the_bundled_model_answers_out_of_scope_with_its_reason(tmp_path) -> None:
    """The bundled model stores an out-of-scope score: pixel noise is answered OUT_OF_SCOPE, with the score,
    the threshold and why, and /info says where the threshold lies (the page shows both)."""
    import io

    import numpy as np
    from PIL import Image

    from cifake.scoring.weights import BUNDLED_DIR

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    with serving(serve_cfg(tmp_path, BUNDLED_DIR, *SMALL)) as client:
        info = ok(client.get("/info"))["model"]
        threshold = info["model"]["out_of_scope"]["threshold"]
        (result,) = ok(client.post("/predict", files=[("file", ("noise.png", buffer.getvalue(), "image/png"))]))[
            "images"]
    assert result["label"] == "OUT_OF_SCOPE" and result["out_of_scope"] > threshold
    assert result["out_of_scope_threshold"] == threshold and "not trained on images like this one" in result["reason"]
