"""Where the Hydra configs live: the checkout's top-level ``conf/`` (the one users edit) when the
package runs from a checkout, else the copy shipped inside the installed package."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT_CONF = _PACKAGE.parent / "conf"
_SHIPPED_CONF = _PACKAGE / "conf"


def config_dir() -> Path:
    """The folder holding ``train.yaml``, ``evaluate.yaml``, ... and the config groups."""
    if (_CHECKOUT_CONF / "train.yaml").is_file():
        return _CHECKOUT_CONF
    return _SHIPPED_CONF


CONF_DIR = config_dir()
