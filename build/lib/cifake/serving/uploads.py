"""What a request to ``POST /predict`` may hold, and its images decoded as the model sees them.

Free of web frameworks (a request arrives here as a plain mapping: the parsed JSON body, or the
multipart form), so every rule is tested on its own. A request a client must fix raises
:class:`Rejected` with the HTTP status and a reason that names the image and the problem.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifake.data.decode import to_model_input

# The multipart field that carries the images (repeated for several), and the options a request may set.
FILE_FIELD = "file"
OPTIONS = ("gradcam", "threshold")
JSON_KEYS = ("image", "images", "name", *OPTIONS)
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
SHOWN = 60  # characters of a rejected value quoted back in the reason


class Rejected(Exception):
    """A request answered with an error instead of scores: the HTTP status and why, in one line (a
    4xx: the client must fix it)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Limits:
    """What one request may hold; every number comes from ``conf/serve.yaml``."""

    max_images: int
    max_image_pixels: int  # width x height of one image, checked before its pixels are decoded
    formats: tuple[str, ...]  # Pillow format names (JPEG, PNG, ...): nothing else is even opened


@dataclass(frozen=True)
class WarnAt:
    """When an image gets a warning that the model may not know images like it (``serve.yaml: warn``)."""

    max_scale: float  # its longer side over the model's input side
    max_aspect: float  # longer side over shorter side: it is squeezed into a square
    min_colours: int  # distinct colours at the model's input size: fewer is a graphic, not a photo


@dataclass(frozen=True)
class Upload:
    """One image as it came: its name (the file's, or ``image-<i>``) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Options:
    """What a request asked for besides its images."""

    gradcam: bool
    threshold: float | None  # None: the server's


@dataclass
class Decoded:
    """One upload as the model sees it, with what it was and what was done to it."""

    name: str
    pixels: np.ndarray  # (3, S, S) uint8 RGB
    width: int
    height: int
    mode: str
    format: str
    frames: int
    transparent: bool
    size_bytes: int
    conversions: list[str]
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The input's part of a response: what was sent, and how it was made the model's input."""
        return {"width": self.width, "height": self.height, "mode": self.mode, "format": self.format,
                "frames": self.frames, "bytes": self.size_bytes}


def _shown(value: Any) -> str:
    """``value`` as a reason quotes it: its repr (which escapes what is not printable), cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _name(value: Any) -> str:
    """An image's name as the client gave it, made fit to be sent back: JSON may carry a lone
    surrogate (``"\\ud800"``), which no UTF-8 response can hold; it is written as its escape."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise Rejected(400, f"{key}={_shown(value)} is not a yes/no value; send {key}=true or {key}=false")


def _threshold(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise Rejected(400, f"threshold={_shown(value)} is not a number; send a probability in [0, 1]") from None
    except OverflowError:  # an integer too large for a float (JSON's have no bound): outside [0, 1] either way
        threshold = float("inf")
    if not 0.0 <= threshold <= 1.0:
        raise Rejected(400, f"threshold={_shown(value)} must lie in [0, 1] (it applies to p_real)")
    return threshold


def _base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise Rejected(400, f"{where} must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):  # a data URL, as a browser's FileReader gives it
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise Rejected(400, f"{where} is a data URL without ;base64; send the image base64-encoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(400, f"{where} is not valid base64") from None


def _check_count(n: int, limits: Limits) -> None:
    if n == 0:
        raise Rejected(400, f"no image in the request: send one or more multipart fields {FILE_FIELD!r}, or JSON "
                            '{"image": "<base64>"} or {"images": ["<base64>", ...]}')
    if n > limits.max_images:
        raise Rejected(413, f"too many images: {n} in one request, at most {limits.max_images} (max_images)")


def from_json(body: Any, limits: Limits, gradcam_default: bool) -> tuple[list[Upload], Options]:
    """The uploads and options of a JSON body: ``{"image": b64, "name": ...}`` or ``{"images": [b64 or
    {"data": b64, "name": ...}, ...]}``, each base64 string optionally a data URL; ``gradcam``, ``threshold``."""
    if not isinstance(body, Mapping):
        raise Rejected(400, f"the JSON body must be an object such as {{\"image\": \"<base64>\"}}, got "
                            f"{type(body).__name__}")
    unknown = sorted(set(body) - set(JSON_KEYS))
    if unknown:
        raise Rejected(400, f"unknown key {unknown[0]!r} in the JSON body; the keys are {', '.join(JSON_KEYS)}")
    if ("image" in body) == ("images" in body):
        raise Rejected(400, 'send either "image" (one base64 image) or "images" (a list of them), not '
                            f"{'both' if 'image' in body else 'neither'}")
    if "image" in body:
        items: Sequence[Any] = [{"data": body["image"], "name": body.get("name")}]
    else:
        items = body["images"]
        if not isinstance(items, list):
            raise Rejected(400, f'"images" must be a list, got {type(items).__name__}')
    _check_count(len(items), limits)
    uploads = []
    for i, item in enumerate(items):
        where = "image" if "image" in body else f"images[{i}]"
        if isinstance(item, Mapping):
            if "data" not in item:
                raise Rejected(400, f'{where} has no "data" (its base64 bytes)')
            data, name = item["data"], item.get("name")
        else:
            data, name = item, None
        uploads.append(Upload(_name(name) if name else f"image-{i}", _base64(data, where)))
    options = Options(_flag(body.get("gradcam", gradcam_default), "gradcam"), _threshold(body.get("threshold")))
    return uploads, options


def from_form(form: Any, limits: Limits, gradcam_default: bool) -> tuple[list[Upload], Options]:
    """The uploads and options of a multipart form (a starlette ``FormData``): one or more ``file``
    parts, and the fields ``gradcam`` and ``threshold``."""
    keys = list(dict.fromkeys(form.keys()))
    unknown = [k for k in keys if k not in (FILE_FIELD, *OPTIONS)]
    if unknown:
        raise Rejected(400, f"unknown form field {unknown[0]!r}; send the images as {FILE_FIELD!r} "
                            f"(the options: {', '.join(OPTIONS)})")
    parts = form.getlist(FILE_FIELD)
    _check_count(len(parts), limits)
    uploads = []
    for i, part in enumerate(parts):
        if isinstance(part, str):  # e.g. curl -F file=photo.jpg, without the @ that sends the file
            raise Rejected(400, f"field {FILE_FIELD!r} #{i + 1} is text, not a file (with curl: -F file=@photo.jpg)")
        part.file.seek(0)
        uploads.append(Upload(_name(part.filename) if part.filename else f"image-{i}", part.file.read()))

    def last(key: str) -> Any:
        values = form.getlist(key)
        return values[-1] if values else None

    gradcam = last("gradcam")
    options = Options(gradcam_default if gradcam is None else _flag(gradcam, "gradcam"), _threshold(last("threshold")))
    return uploads, options


def parse(request: Any, limits: Limits, gradcam_default: bool) -> tuple[list[Upload], Options]:
    """The uploads and options of a request as LitServe hands it over: a form or a JSON object."""
    if hasattr(request, "getlist"):
        return from_form(request, limits, gradcam_default)
    return from_json(request, limits, gradcam_default)


def decode(upload: Upload, size: int, resample: str, limits: Limits, warn_at: WarnAt) -> Decoded:
    """``upload`` as the model's ``(3, size, size)`` uint8 input, converted exactly as
    :func:`cifake.data.decode.decode_image` converts a file; :class:`Rejected` (422, or 413 for too
    many pixels) when it is empty, not an image of an allowed format, damaged or a decompression bomb."""
    name = upload.name
    if not upload.data:
        raise Rejected(422, f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns past MAX_IMAGE_PIXELS (the worker sets it to max_image_pixels) and raises past twice
            # that; the check below refuses anything past it, with the numbers, before a pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data), formats=list(limits.formats)) as im:
                width, height = im.size
                if width * height > limits.max_image_pixels:  # from the header alone: nothing decoded yet
                    raise Rejected(413, f"{name}: {width}x{height} = {width * height:,} pixels, over the limit of "
                                        f"{limits.max_image_pixels:,} (max_image_pixels): a decompression bomb, or "
                                        "far larger than this model could use")
                mode, fmt, frames = im.mode, im.format or "?", int(getattr(im, "n_frames", 1))
                transparent = "A" in mode or "transparency" in im.info
                im.load()  # truncated files fail here
                pixels, conversions = to_model_input(im, size, resample)
    except Rejected:
        raise
    except Image.DecompressionBombError as err:
        raise Rejected(413, f"{name}: refused as a decompression bomb, far over the limit of "
                            f"{limits.max_image_pixels:,} pixels (max_image_pixels): {err}") from None
    except UnidentifiedImageError:
        raise Rejected(422, f"{name}: not an image in an accepted format ({', '.join(limits.formats)})") from None
    # Hostile or damaged files make Pillow raise many kinds of error (OSError for a truncated JPEG,
    # SyntaxError, struct.error, ...): each is the client's file, never the server's fault.
    except Exception as err:
        raise Rejected(422, f"{name}: cannot be decoded, damaged or truncated ({type(err).__name__}: {err})") from None
    decoded = Decoded(name, pixels, width, height, mode, fmt, frames, transparent, len(upload.data), conversions)
    decoded.warnings = warnings_for(decoded, size, warn_at)
    return decoded


def warnings_for(image: Decoded, size: int, warn_at: WarnAt) -> list[str]:
    """Why the model may not know images like this one: far from its training size, squeezed,
    not an RGB photo, animated, or a graphic of few colours."""
    out = []
    longer, shorter = max(image.width, image.height), min(image.width, image.height)
    if longer > warn_at.max_scale * size:
        out.append(f"{image.width}x{image.height} is {longer / size:.0f}x the {size}x{size} the model was trained on: "
                   "it was downscaled, and a model of small images has not seen photos like it; trust the "
                   "verdict less")
    elif shorter < size:
        out.append(f"{image.width}x{image.height} is smaller than the {size}x{size} the model was trained on: "
                   "it was enlarged")
    if longer > warn_at.max_aspect * shorter:
        out.append(f"not square ({image.width}x{image.height}): squeezed to {size}x{size}, which distorts it")
    if image.mode != "RGB":
        out.append(f"mode {image.mode}, not an RGB photo: converted to RGB"
                   + (" (its transparency dropped)" if image.transparent else ""))
    if image.frames > 1:
        out.append(f"{image.frames} frames: the first was used")
    colours = len(np.unique(image.pixels.reshape(3, -1), axis=1).T)
    if colours < warn_at.min_colours:
        out.append(f"only {colours} distinct colour{'' if colours == 1 else 's'} at {size}x{size}: a graphic or "
                   "drawing rather than a photo")
    return out
