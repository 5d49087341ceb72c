"""The serving job behind ``serve.py``: a LitServe server for any trained model file, with a web
page to drop images on (:mod:`cifake.serving`).

Everything a user can get wrong is checked here, before a worker starts: the model file is opened
once in this process (then dropped; each inference worker opens its own), and the host, port,
limits, batching, key and scoring settings are checked, each mistake one ``error:`` line.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image

from cifake.core.errors import ConfigError
from cifake.scoring import check_threshold, model_or_bundled
from cifake.serving import DetectorAPI, Limits, ModelSettings, WarnAt, build_server, identity, open_model

log = logging.getLogger(__name__)
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the hosts LitServe binds
PORTS = (1024, 65535)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def model_settings(cfg: DictConfig) -> ModelSettings:
    """The model's part of ``serve.yaml``, as plain values for the workers."""
    ckpt_path = model_or_bundled(cfg.ckpt_path)
    return ModelSettings(path=str(ckpt_path), contract=None if cfg.contract is None else str(cfg.contract),
                         device=str(cfg.device), precision=str(cfg.scoring.precision), tta=_plain(cfg.tta),
                         resample=cfg.resample, threshold=float(cfg.threshold), unsure_band=_plain(cfg.unsure_band),
                         out_of_scope=_plain(cfg.out_of_scope), batch_size=int(cfg.batch_size),
                         gradcam=bool(cfg.gradcam), gradcam_layer=cfg.gradcam_layer,
                         gradcam_scale=int(cfg.gradcam_scale), gradcam_alpha=float(cfg.gradcam_alpha))


def limits(cfg: DictConfig) -> Limits:
    """What one request may hold, checked."""
    Image.init()  # registers every format Pillow has, so the list below is complete
    formats = tuple(str(f).upper() for f in cfg.formats)
    unknown = [f for f in formats if f not in Image.OPEN]
    if not formats or unknown:
        raise ConfigError(f"formats={list(cfg.formats)}: {unknown or 'empty'}; choose among Pillow's "
                          f"{sorted(Image.OPEN)}")
    for key in ("max_images", "max_image_pixels", "max_upload_mb", "max_json_depth"):
        if not cfg[key] > 0:
            raise ConfigError(f"{key}={cfg[key]} must be positive")
    return Limits(max_images=int(cfg.max_images), max_image_pixels=int(cfg.max_image_pixels), formats=formats)


def check_server(cfg: DictConfig) -> None:
    """Host, port, workers, batching and timeouts, before anything starts."""
    if cfg.host not in HOSTS:
        raise ConfigError(f"host={cfg.host!r}; LitServe listens on {' or '.join(HOSTS)} (127.0.0.1: this machine "
                          "only; 0.0.0.0 or ::: every interface)")
    if not isinstance(cfg.port, int) or not PORTS[0] <= cfg.port <= PORTS[1]:
        raise ConfigError(f"port={cfg.port!r} must be a number from {PORTS[0]} to {PORTS[1]}")
    for key in ("workers", "max_batch_size", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} must be a whole number of at least 1")
    if cfg.api_servers is not None and (not isinstance(cfg.api_servers, int) or cfg.api_servers < 1):
        raise ConfigError(f"api_servers={cfg.api_servers!r} must be null or at least 1")
    if not cfg.request_timeout > 0:
        raise ConfigError(f"request_timeout={cfg.request_timeout} must be positive (seconds)")
    if not 0 <= cfg.batch_timeout < cfg.request_timeout:
        raise ConfigError(f"batch_timeout={cfg.batch_timeout} must be at least 0 and below "
                          f"request_timeout={cfg.request_timeout} (seconds)")
    for key in ("max_scale", "max_aspect", "min_colours"):
        if not cfg.warn[key] > 0:
            raise ConfigError(f"warn.{key}={cfg.warn[key]} must be positive")


def api_key(cfg: DictConfig) -> str | None:
    """The key from the environment variable ``api_key_env`` names, or ``None`` when it names none."""
    if cfg.api_key_env is None:
        return None
    key = os.environ.get(str(cfg.api_key_env), "")
    if not key:
        raise ConfigError(f"api_key_env={cfg.api_key_env} but the environment variable {cfg.api_key_env} is "
                          f"{'empty' if cfg.api_key_env in os.environ else 'not set'}; export it with the key, or "
                          "pass api_key_env=null to serve without a key")
    return key


def accelerator(kind: str, device: str) -> str:
    """LitServe's accelerator for the model: networks (checkpoints, safetensors exports) where ``device``
    says, the rest on the CPU."""
    if kind not in ("checkpoint", "safetensors") or device == "cpu":
        return "cpu"
    if device == "auto":
        return "auto"
    if device in ("cuda", "gpu"):
        return "cuda"
    raise ConfigError(f"device={device!r}; use auto, cpu or cuda (workers=N serves N copies per device)")


def check_port_free(host: str, port: int) -> None:
    """Fail now, in one line, if something listens on the port already."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); pass port=<a free port>") from None


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
        from cifake.analysis.explain import resolve_layer  # torch and Grad-CAM: a checkpoint has loaded torch already

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
    server = build_server(api, accelerator=target, workers=int(cfg.workers), request_timeout=float(cfg.request_timeout),
                          max_upload_bytes=int(float(cfg.max_upload_mb) * 2**20),
                          max_json_depth=int(cfg.max_json_depth), api_key=key,
                          api_key_header=str(cfg.api_key_header), metadata=metadata)
    # Opened on the CPU above; /info names the devices LitServe's workers score on (each answer names its worker's).
    server.model_metadata["model"]["device"] = ", ".join(str(d) for d in _flat(server.devices))
    return server


def _flat(items: Any) -> list[Any]:
    return [x for item in items for x in _flat(item)] if isinstance(items, (list, tuple)) else [items]


REPEAT_GRACE_S = 2.0  # a stop signal again within this: the same stop (sent to this process and to its group)


class Stops:
    """SIGTERM (``docker stop``, systemd, ``kill``) and SIGINT (Ctrl+C) as this server takes them: in this
    process, a KeyboardInterrupt, on which LitServe stops its HTTP and inference workers and returns,
    instead of this process dying alone. Constructing it installs the handlers.

    LitServe forks its HTTP servers (and multiprocessing its manager) from this process, and they
    inherit the handler: uvicorn, having shut down on the signal, raises it again through the handler it
    found, and a KeyboardInterrupt there ends that process with a traceback. In a forked process the
    handler ends it as the signal's default action would, quietly. (The inference workers are spawned,
    not forked: :func:`workers_ignore_sigint` and :meth:`cifake.serving.DetectorAPI.setup` set theirs.)

    One stop often arrives twice (``timeout``, a terminal or a supervisor signals the process and its
    group). Once a shutdown is under way (LitServe says it began one, or :func:`run` did), a repeat within
    :data:`REPEAT_GRACE_S` is that same stop and is let pass, so the shutdown is not cut short, and a later
    one (a second Ctrl+C) ends the process at once. Before that, every stop raises again. Once stopping,
    the manager process may end before LitServe's monitor thread reads from it: that lost connection is
    the stop, not an error, and is not printed."""

    def __init__(self) -> None:
        self.main = os.getpid()
        self.first: float | None = None  # when the first stop came
        self.stopping = False  # a shutdown is under way
        self.holding = False  # inside :meth:`held`: a stop is noted, not raised
        self.held_stop = False
        logging.getLogger("litserve.server").addFilter(self._shutdown_begun)
        self._default_hook = threading.excepthook
        threading.excepthook = self._quiet_when_stopping
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._interrupt)

    def _interrupt(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.main:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        if self.first is None:
            self.first = time.monotonic()
        if self.holding:
            self.held_stop = True
            return
        if not self.stopping:
            raise KeyboardInterrupt
        if time.monotonic() - self.first > REPEAT_GRACE_S:
            log.warning("Stopped again while shutting down: leaving now")
            os._exit(128 + signum)

    def mark_stopping(self) -> None:
        """Note that a shutdown is under way: a repeated stop within the grace is the same stop."""
        self.stopping = True

    def _shutdown_begun(self, record: logging.LogRecord) -> bool:  # LitServe logs it as it takes the stop
        if record.getMessage().startswith("KeyboardInterrupt received"):
            self.mark_stopping()
        return True

    def _quiet_when_stopping(self, args: threading.ExceptHookArgs) -> None:
        if self.first is not None and issubclass(args.exc_type, (ConnectionError, EOFError)):
            log.debug("%s in thread %s while stopping", args.exc_type.__name__, args.thread)
            return
        self._default_hook(args)

    def held(self, launch: Callable[..., Any], undo: Callable[[Any], None]) -> Callable[..., Any]:
        """``launch`` with any stop that arrives while it runs noted, and raised once it has returned, after
        ``undo`` (given what it returned) has stopped what it started, which its caller never learns of.

        For the calls that fork: Python runs its at-fork handlers (logging's among them) around each fork,
        and a KeyboardInterrupt raised inside one is printed as "Exception ignored" and dropped, or one
        raised between the fork and the bookkeeping leaves a process no one knows to stop. (A handler, not
        a signal mask: any thread may take a process's signal, and Python runs the handler in this one.)"""

        def launch_with_stops_held(*args: Any, **kwargs: Any) -> Any:
            self.holding = True
            try:
                started = launch(*args, **kwargs)
            except BaseException:
                self.holding = False
                raise
            if self.held_stop:  # still holding: a stop during the undo is the same stop
                self.held_stop = False
                undo(started)
                self.holding = False
                raise KeyboardInterrupt
            self.holding = False
            return started

        return launch_with_stops_held


def workers_ignore_sigint(server: Any) -> None:
    """Start LitServe's inference workers (``server``'s) with SIGINT ignored. Ctrl+C sends SIGINT to
    every process of the terminal: in a worker it would raise a KeyboardInterrupt, and print its
    traceback, wherever the worker happens to be (importing torch, waiting for requests). The main
    process stops the workers itself (SIGTERM) once the HTTP servers are down. A spawned process
    inherits an ignored signal, and Python leaves it ignored, so the workers ignore it from their
    first instruction on; this process ignores it only while it starts them (milliseconds)."""

    def ignoring_sigint(launch: Callable[..., Any]) -> Callable[..., Any]:
        def launch_ignoring_sigint(*args: Any, **kwargs: Any) -> Any:
            handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                return launch(*args, **kwargs)
            finally:
                signal.signal(signal.SIGINT, handler)

        return launch_ignoring_sigint

    # LitServe starts the workers in the first (at startup) and restarts one in the second (when one dies).
    for method in ("launch_inference_worker", "launch_single_inference_worker"):
        setattr(server, method, ignoring_sigint(getattr(server, method)))


def hold_stops_while_forking(server: Any, stops: Stops) -> None:
    """Make LitServe (``server``) fork its multiprocessing manager and its HTTP servers with stops held
    (:meth:`Stops.held`); a stop that came meanwhile stops the HTTP servers just forked (LitServe's
    shutdown never learns of them) or leaves LitServer.run, whose caller stops the manager."""

    def stop_http_servers(workers: dict[int, Any]) -> None:
        # Processes; LitServe's thread servers (api_server_worker_type=thread) end with this process.
        end_processes([worker for worker in workers.values() if hasattr(worker, "terminate")])

    server._init_manager = stops.held(server._init_manager, lambda _manager: None)
    server._start_server = stops.held(server._start_server, stop_http_servers)


def end_processes(processes: list[Any]) -> None:
    """Ask each of ``processes`` (multiprocessing processes) to stop (SIGTERM), then wait for each."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        log.debug("Stopped %s (pid %s): exit code %s", process.name, process.pid, process.exitcode)


def stop_children(server: Any) -> None:
    """Stop the processes ``server`` (a LitServer) started before it served (stopped while starting, it
    returns without stopping them): its inference workers first, then the rest (the multiprocessing
    manager whose queues the workers read, which would fail them if it went first)."""
    workers = list(getattr(server, "inference_workers", []))  # set by LitServer.run, as it starts them
    end_processes(workers)
    end_processes([child for child in multiprocessing.active_children() if child not in workers])


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
