"""Scoring with a safetensors export (``model.safetensors`` and its ``config.json``, as export.py
``format=safetensors`` writes them and as the bundled model ships): plain tensors and JSON, nothing
unpickled, no Lightning and no scikit-learn."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifake.core.digest import file_sha256
from cifake.core.errors import ConfigError, ModelFileError
from cifake.scoring.onnx_contract import read_export_json
from cifake.scoring.scorer import NO_TTA, Scorer, with_temperature

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"  # the model card, as a model hub shows it
CONFIG_FORMAT = "cifake-safetensors/1"
# The networks a config may name: nothing else is ever imported or called from a config file.
NETWORKS = ("cifake.models.resnet.ResNet", "cifake.models.vgg.VGG")
METADATA = {"format": "pt"}  # the only header metadata written and accepted
MAX_HEADER = 1 << 20  # bytes; a network of this package has a header of a few kB
# The out-of-scope score's tensors ride in model.safetensors beside the network's, under this prefix.
SCOPE_PREFIX = "out_of_scope."
SCOPE_TENSORS = ("means", "precision")


def read_config(path: Path) -> dict[str, Any]:
    """The ``config.json`` of a safetensors export, checked for its format and its network."""
    config = read_export_json(path, CONFIG_FORMAT, "config", f"a {WEIGHTS_FILE} needs the {CONFIG_FILE} that "
                              "export.py format=safetensors wrote beside it",
                              "export the checkpoint again with export.py format=safetensors")
    network = config.get("network")
    if not isinstance(network, dict) or network.get("_target_") not in NETWORKS:
        target = network.get("_target_") if isinstance(network, dict) else None
        raise ModelFileError(f"{path} names the network {target!r}; a config may only name one of {list(NETWORKS)}")
    for key in ("classes", "image_size", "weights"):
        if key not in config:
            raise ModelFileError(f"{path} lacks {key!r}; export the checkpoint again with format=safetensors")
    return config


def check_header(path: Path) -> None:
    """Refuse a safetensors file whose header holds anything but tensors and ``{"format": "pt"}``
    metadata (the library checks the rest: offsets, dtypes, a file covered exactly)."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > MAX_HEADER:
                raise ValueError(f"a {size}-byte header")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path} is not a readable safetensors file ({err}); expected the {WEIGHTS_FILE} "
                             "export.py format=safetensors wrote") from err
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a safetensors file (its header is not a table of tensors)")
    metadata = header.pop("__metadata__", None)
    if metadata not in (None, METADATA):
        raise ModelFileError(f"{path} carries metadata beside its tensors ({json.dumps(metadata)[:200]}); a cifake "
                             f"export carries none but {METADATA}: refused")
    odd = [name for name, entry in header.items()
           if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}]
    if odd:
        raise ModelFileError(f"{path} holds entries that are not tensors ({', '.join(odd[:5])}): refused")


def read_weights(path: Path, expected_sha256: str | None) -> dict[str, Any]:
    """The tensors of ``path`` on the CPU, after its SHA-256 is checked against ``expected_sha256``
    (the config's record) and its header against :func:`check_header`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise ModelFileError(f"{path} is not the file its {CONFIG_FILE} describes (SHA-256 differs): damaged or "
                             "replaced; export the checkpoint again")
    check_header(path)
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not a readable safetensors file ({err})") from err


def build_network(spec: Mapping[str, Any], source: Path) -> Any:
    """The network ``spec`` describes (``_target_``, one of :data:`NETWORKS`, and its arguments, as an
    older version may have written them: :func:`cifake.models.networks.build_network`)."""
    from cifake.models.networks import build_network as network_of

    try:
        return network_of(spec)
    except (TypeError, ValueError, ConfigError) as err:
        raise ModelFileError(f"{source}: its network cannot be built from its config ({err}); export the "
                             "checkpoint again with this version") from err


def load_detector(weights: Path) -> tuple[Any, dict[str, Any]]:
    """The :class:`~cifake.models.detector.Detector` of a safetensors export, on the CPU in eval mode,
    and its config; a config that does not match the weights (names or shapes) is refused."""
    from cifake.models.detector import Detector

    config = read_config(weights.parent / CONFIG_FILE)
    tensors = read_weights(weights, (config.get("weights") or {}).get("sha256"))
    scope = {name[len(SCOPE_PREFIX):]: tensors.pop(name) for name in list(tensors) if name.startswith(SCOPE_PREFIX)}
    if scope:
        config = {**config, "out_of_scope": {**(config.get("out_of_scope") or {}), **scope}}
    net = build_network(config["network"], weights.parent / CONFIG_FILE)
    expected = net.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        said = "; ".join(part for part in (
            f"missing {', '.join(missing[:5])}" if missing else "", f"not in the network {', '.join(extra[:5])}"
            if extra else "", f"other shapes {', '.join(wrong[:5])}" if wrong else "") if part)
        raise ModelFileError(f"{weights} does not match the network its {CONFIG_FILE} describes ({said}); "
                             "export the checkpoint again")
    net.load_state_dict(tensors)
    detector = Detector(net, config["classes"], config["image_size"], config.get("gradcam_layer"))
    return detector.eval(), config


def weights_scorer(weights: Path, device: str, precision: str, tta: Mapping[str, Any] | None = None) -> Scorer:
    """A safetensors export on ``device`` (``auto``: CUDA where there is one) at ``precision``, with
    the temperature and unsure band its config records."""
    from cifake.models.precision import channels_last_on, check_scoring_precision
    from cifake.scoring.network import network_score, pick_device

    check_scoring_precision(precision)
    detector, config = load_detector(weights)
    tta = dict(tta or NO_TTA)
    detector.set_tta(tta.get("mode", "none"), tta.get("shift", 1), tta.get("padding", "reflect"))
    target = pick_device(device)
    detector = detector.to(target).set_channels_last(channels_last_on("auto", target))
    band = config.get("unsure_band")
    head, settings = None, None
    if config.get("out_of_scope") is not None:
        from cifake.models.scope import scope_from_record
        from cifake.scoring.network import network_scope

        try:
            head, settings = scope_from_record(config["out_of_scope"])
        except ValueError as err:
            raise ModelFileError(f"{weights}: {err}; export the checkpoint again") from err
    scorer = Scorer(kind="safetensors", source=str(weights), score=network_score(detector, target, precision),
                    classes=tuple(config["classes"]), image_size=int(config["image_size"]),
                    resample=config.get("resample"), threshold=config.get("threshold"),
                    tta={"mode": detector.tta[0], "shift": detector.tta[1], "padding": detector.tta[2]},
                    model=detector, gradcam_layer=config.get("gradcam_layer"), device=target, precision=precision,
                    unsure_band=None if band is None else (float(band[0]), float(band[1])),
                    training=config.get("training"), compute=config.get("compute"),
                    scope=None if head is None else network_scope(detector, head, target), scope_settings=settings)
    return with_temperature(scorer, config.get("temperature"))


BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"  # cifake/bundled/, shipped in the wheel


def bundled_weights() -> Path | None:
    """The model that ships with the package (``cifake/bundled/``), if this copy has it."""
    weights = BUNDLED_DIR / WEIGHTS_FILE
    return weights if weights.is_file() and (BUNDLED_DIR / CONFIG_FILE).is_file() else None
