"""The serving job behind ``serve.py``: a LitServe server for any trained model file, with a web
page to drop images on (:mod:`cifake.serving`).

Everything a user can get wrong is checked here, before a worker starts: the model file is opened
once in this process (then dropped; each inference worker opens its own), and the host, port,
limits, batching, key and scoring settings are checked, each mistake one ``error:`` line.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from omegaconf import DictConfig

from cifake.core.errors import ConfigError
from cifake.core.signals import Stops, hold_stops_while_forking, stop_children, workers_ignore_sigint
from cifake.scoring import check_threshold
from cifake.serving import DetectorAPI, GuardSettings, WarnAt, build_server, identity, open_model
from cifake.serving.settings import accelerator, api_key, check_port_free, check_server, limits, model_settings

log = logging.getLogger(__name__)
def build(cfg: DictConfig) -> Any:
    """The LitServer for ``cfg`` (a ``litserve.LitServer``), checked but not started."""
    settings = model_settings(cfg)
    check_threshold(settings.threshold)
    check_server(cfg)
    upload_limits = limits(cfg)
    warn_at = WarnAt(max_scale=float(cfg.warn.max_scale), max_aspect=float(cfg.warn.max_aspect),
                     min_colours=int(cfg.warn.min_colours))
    key = api_key(cfg)
    # Opened here on the CPU to check it and name it; each worker opens it again on its own device.
    scorer, resample, band = open_model(settings, "cpu")
    if scorer.image_size is None:
        raise ConfigError(f"{settings.path} does not record the image size it was trained on; retrain it with this "
                          "version (model.image_size is recorded in every model file it writes)")
    layer = settings.gradcam_layer or scorer.gradcam_layer
    if settings.gradcam and scorer.explainable and layer is None:
        raise ConfigError("gradcam=true, but the checkpoint names no model.gradcam_layer; set gradcam_layer=<a "
                          "layer>, e.g. net.features.1.3")
    if scorer.explainable and layer is not None:  # a mistyped layer: one line now, not a 500 per request later
        from cifake.models.gradcam import resolve_layer  # torch and Grad-CAM: a checkpoint has loaded torch already

        resolve_layer(scorer.model, layer)
    if settings.gradcam and not scorer.explainable:
        log.warning("gradcam=true, but Grad-CAM needs a PyTorch checkpoint's gradients and %s is %s: responses "
                    "carry no overlay", settings.path, "a forest" if scorer.kind == "forest" else "an ONNX model")
    metadata = {"model": identity(scorer, settings, resample), "threshold": settings.threshold,
                "unsure_band": None if band is None else list(band),
                "gradcam": {"available": scorer.explainable and layer is not None, "default": settings.gradcam},
                "limits": {"max_upload_mb": float(cfg.max_upload_mb), "max_json_depth": int(cfg.max_json_depth),
                           "max_images": upload_limits.max_images,
                           "max_image_pixels": upload_limits.max_image_pixels,
                           "formats": list(upload_limits.formats)},
                "batching": {"max_batch_size": int(cfg.max_batch_size), "batch_timeout": float(cfg.batch_timeout)},
                "api_key_header": cfg.api_key_header if key else None}
    target = accelerator(scorer.kind, settings.device)
    del scorer
    gc.collect()
    api = DetectorAPI(settings, upload_limits, warn_at, int(cfg.max_batch_size), float(cfg.batch_timeout))
    guard = GuardSettings(max_bytes=int(float(cfg.max_upload_mb) * 2**20), max_json_depth=int(cfg.max_json_depth),
                          api_key=key, api_key_header=str(cfg.api_key_header))
    server = build_server(api, accelerator=target, workers=int(cfg.workers), request_timeout=float(cfg.request_timeout),
                          guard_settings=guard, metadata=metadata)
    # Opened on the CPU above; /info names the devices LitServe's workers score on (each answer names its worker's).
    server.model_metadata["model"]["device"] = ", ".join(str(d) for d in _flat(server.devices))
    return server


def _flat(items: Any) -> list[Any]:
    return [x for item in items for x in _flat(item)] if isinstance(items, (list, tuple)) else [items]


def run(cfg: DictConfig) -> None:
    """Serve ``cfg.ckpt_path`` on ``cfg.host``:``cfg.port`` until stopped (Ctrl+C or SIGTERM)."""
    stops = Stops()
    server = None
    try:
        server = build(cfg)
        check_port_free(cfg.host, cfg.port)
        workers_ignore_sigint(server)
        hold_stops_while_forking(server, stops)
        shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
        model = server.model_metadata["model"]
        log.info("Serving %s (%s, %dx%d input) on http://%s:%d/ : the page at /, POST /predict, GET /health, GET "
                 "/info%s", model["file"], model["kind"], model["image_size"], model["image_size"], shown, cfg.port,
                 f"; POST /predict needs the {cfg.api_key_header} header" if cfg.api_key_env else "")
        server.run(host=cfg.host, port=cfg.port, num_api_servers=cfg.api_servers, log_level=cfg.log_level,
                   generate_client_file=False)
    # Stopped before it served (LitServe handles a stop once it serves, and stops its workers itself then),
    # or stopped again while it shut down: a stop asked for, not an error.
    except KeyboardInterrupt:
        stops.mark_stopping()
        log.info("Stopped")
        stop_children(server)
