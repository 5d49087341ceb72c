"""``serve.yaml`` checked before a worker starts, each mistake one ``error:`` line: the model's settings for the
workers, what one request may hold, host, port, workers, batching and timeouts, the API key, the accelerator, and a
port already taken."""

from __future__ import annotations

import os
import socket
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image

from cifake.core.errors import ConfigError
from cifake.scoring import model_or_bundled
from cifake.serving.api import ModelSettings
from cifake.serving.uploads import Limits

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


