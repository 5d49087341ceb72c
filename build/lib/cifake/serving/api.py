"""The LitServe API: requests in, one answer per image out, scored through :mod:`cifake.scoring`.

LitServe runs :class:`DetectorAPI` in its inference workers: ``setup`` opens the model file there,
``decode_request`` turns each request into decoded images (or a refusal), ``predict`` scores every
image of the requests it was handed (one request, or a batch of them) in one pass, and
``encode_response`` writes each request's JSON. A refusal travels as a value, never as an
exception: LitServe fails every request of a batch when one of them raises, so one bad upload
would take its neighbours down with it.
"""

from __future__ import annotations

import base64
import io
import logging
import multiprocessing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import litserve as ls
import numpy as np
from PIL import Image
from starlette.responses import JSONResponse

from cifake.core.digest import file_sha256
from cifake.core.signals import quiet_shutdown
from cifake.scoring import Scorer, choose_resample, open_scorer, resolve_band
from cifake.scoring.open_model_file import bundled_name, model_file
from cifake.scoring.scorer import OUT_OF_SCOPE, resolve_scope, scope_reason, verdicts
from cifake.scoring.weights import bundled_weights
from cifake.serving.uploads import Decoded, Limits, Options, Rejected, WarnAt, decode, parse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSettings:
    """How the model file is opened and answered with (``serve.yaml``); plain values, so LitServe
    can hand them to the workers it spawns."""

    path: str
    contract: str | None
    device: str
    precision: str
    tta: Mapping[str, Any]
    resample: str | None
    threshold: float
    unsure_band: Any  # auto, None or [low, high], as resolve_band takes it
    out_of_scope: Any  # auto, None or a threshold, as resolve_scope takes it
    batch_size: int  # images per forward pass
    gradcam: bool  # the default when a request does not say
    gradcam_layer: str | None
    gradcam_scale: int
    gradcam_alpha: float


def open_model(settings: ModelSettings, device: str) -> tuple[Scorer, str, tuple[float, float] | None]:
    """The scorer, the resampling filter and the unsure band, chosen as predict.py chooses them."""
    scorer = open_scorer(settings.path, device=device, precision=settings.precision, tta=settings.tta,
                         contract=settings.contract)
    resample = choose_resample(settings.resample, scorer.resample, settings.path)
    band = resolve_band(settings.unsure_band, scorer, settings.threshold)
    return resolve_scope(settings.out_of_scope, scorer), resample, band


def identity(scorer: Scorer, settings: ModelSettings, resample: str) -> dict[str, Any]:
    """Which model answers: its name (the file's, or the bundled model's), its file (name and the
    start of its sha256), kind, input size, classes, resampling, test-time augmentation, the
    temperature, and the precision and device that compute its answers."""
    path = model_file(settings.path)
    digest = file_sha256(path)
    bundled = bundled_weights()
    is_bundled = bundled is not None and path.resolve() == bundled.resolve()
    return {"name": bundled_name() if is_bundled else path.name, "bundled": is_bundled,
            "file": path.name, "sha256": digest[:16], "kind": scorer.kind, "temperature": scorer.temperature,
            "image_size": scorer.image_size, "classes": list(scorer.classes), "resample": resample,
            "tta": scorer.tta.get("mode", "none"), "explainable": scorer.explainable,
            "out_of_scope": None if scorer.scope_threshold is None else dict(scorer.scope_settings or {}),
            **scorer.computed}


@dataclass
class Job:
    """One request's decoded images and options, between ``decode_request`` and ``encode_response``."""

    images: list[Decoded]
    options: Options
    results: list[dict[str, Any]] = field(default_factory=list)


class DetectorAPI(ls.LitAPI):
    """p(FAKE), p(REAL), the verdict and, on request, a Grad-CAM overlay for every uploaded image."""

    def __init__(self, settings: ModelSettings, limits: Limits, warn_at: WarnAt, max_batch_size: int,
                 batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.settings, self.limits, self.warn_at = settings, limits, warn_at

    def setup(self, device: str) -> None:
        """Open the model on ``device`` (LitServe's: ``cpu`` or ``cuda:<n>``) in this worker."""
        if multiprocessing.parent_process() is not None:  # a worker LitServe started, not a test calling setup
            quiet_shutdown()
        # Pillow's own decompression-bomb guard, set explicitly (it warns past this and refuses past
        # twice this; uploads.decode refuses anything past it before decoding).
        Image.MAX_IMAGE_PIXELS = self.limits.max_image_pixels
        self.scorer, self.resample, self.band = open_model(self.settings, device)
        self.model_identity = identity(self.scorer, self.settings, self.resample)
        self.layer = self.settings.gradcam_layer or self.scorer.gradcam_layer
        log.info("Worker ready on %s: %s", device, self.model_identity)

    # No annotation on `request`, nor on encode_response's result: LitServe reads them to type its endpoint (a
    # pydantic body, a response model), and unannotated they mean a raw Request and any response.
    def decode_request(self, request, **kwargs: Any) -> Job | Rejected:
        """The request's images decoded for the model (a form or JSON object), or why it is refused."""
        try:
            uploads, options = parse(request, self.limits, self.settings.gradcam)
            size = int(self.scorer.image_size)
            images = [decode(upload, size, self.resample, self.limits, self.warn_at) for upload in uploads]
            threshold = self.settings.threshold if options.threshold is None else options.threshold
            if self.band is not None and not self.band[0] <= threshold <= self.band[1]:
                raise Rejected(400, f"threshold={threshold} lies outside the model's unsure band {list(self.band)}; "
                                    "send a threshold inside it")
        except Rejected as refusal:
            return refusal
        # A request no rule above foresaw is a bug, and keeps its traceback in the log; but raised, it would fail
        # every request LitServe batched with it. Answered alone, as a 500, its neighbours are scored.
        except Exception:
            log.exception("Reading a request failed")
            return Rejected(500, "internal server error while reading the request (the server's log has the "
                                 "details); the server is still running")
        return Job(images, options)

    def predict(self, x: Any, **kwargs: Any) -> Any:
        """Score every image of one request (``x``), or of a batch of requests (a list): one forward
        pass over all of them, then Grad-CAM for the requests that asked."""
        jobs = x if isinstance(x, list) else [x]
        good = [job for job in jobs if isinstance(job, Job)]
        images = [image for job in good for image in job.images]
        if images:
            pixels = np.stack([image.pixels for image in images])
            p_real = self.scorer.p_real(pixels, self.settings.batch_size)
            scope = self.scorer.out_of_scope(pixels, self.settings.batch_size)
            start = 0
            for job in good:
                end = start + len(job.images)
                job.results = self.answer(job, p_real[start:end], None if scope is None else scope[start:end])
                start = end
        return jobs if isinstance(x, list) else jobs[0]

    def answer(self, job: Job, p_real: np.ndarray, scope: np.ndarray | None = None) -> list[dict[str, Any]]:
        """One result per image of ``job``: numbers and verdict counted as predict.py counts them
        (``scope``: the images' out-of-scope scores, where the model has one)."""
        threshold = self.settings.threshold if job.options.threshold is None else job.options.threshold
        predicted = (p_real > threshold).astype(np.int64)
        labels = verdicts(p_real, self.scorer.classes, threshold, self.band, scope, self.scorer.scope_threshold)
        distances = [None] * len(job.images) if scope is None else scope.tolist()
        overlays: list[str | None] = [None] * len(job.images)
        notes: list[str] = []
        if job.options.gradcam and not self.scorer.explainable:
            notes.append(f"no Grad-CAM: it needs a PyTorch checkpoint's gradients, and this server runs "
                         f"{'a forest' if self.scorer.kind == 'forest' else 'an ONNX model'}")
        elif job.options.gradcam and self.layer is None:
            notes.append("no Grad-CAM: the checkpoint names no model.gradcam_layer (set gradcam_layer=<a layer>)")
        elif job.options.gradcam:
            try:
                overlays = self.overlays(np.stack([image.pixels for image in job.images]), predicted)
            # An explanation that fails (out of memory, say) must not take the verdicts of this request, or of
            # the others batched with it, down with it: they are answered, with a note, and the log has why.
            except Exception as err:
                log.exception("Grad-CAM failed")
                notes.append(f"no Grad-CAM: it failed on the server ({type(err).__name__})")
        results = []
        for image, p, label, distance, overlay in zip(job.images, p_real.tolist(), labels, distances, overlays,
                                                      strict=True):
            size = int(self.scorer.image_size)
            resized = None if (image.width, image.height) == (size, size) else {
                "from": [image.width, image.height], "to": [size, size], "resample": self.resample}
            results.append({"name": image.name, "label": label, "p_real": p, "p_fake": 1.0 - p,
                            "threshold": threshold, "unsure_band": None if self.band is None else list(self.band),
                            "out_of_scope": distance, "out_of_scope_threshold": self.scorer.scope_threshold,
                            "reason": scope_reason(distance, self.scorer.scope_settings)
                            if label == OUT_OF_SCOPE else None,
                            "input": image.describe(), "resized": resized, "conversions": image.conversions,
                            "warnings": image.warnings + notes, "gradcam": overlay})
        return results

    def overlays(self, pixels: np.ndarray, predicted: np.ndarray) -> list[str | None]:
        """Grad-CAM overlays of the predicted class as PNG data URLs, drawn as predict.py draws them."""
        from cifake.models.gradcam import overlay_images  # torch and Grad-CAM: a checkpoint has loaded torch already

        pictures = overlay_images(self.scorer.model, self.scorer.device, self.layer, pixels, predicted,
                                  self.settings.gradcam_scale, self.settings.gradcam_alpha)
        out: list[str | None] = []
        for picture in pictures:
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            out.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
        return out

    def encode_response(self, output: Any, **kwargs: Any):  # unannotated result: see decode_request
        """The request's JSON, or its refusal with the status that says whose fault it is."""
        if isinstance(output, Rejected):
            return JSONResponse({"error": output.reason}, status_code=output.status)
        return {"model": self.model_identity, "images": output.results}
