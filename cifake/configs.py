"""Where the Hydra configs live: the checkout's top-level ``conf/`` (the one users edit) when the
package runs from a checkout, else the copy shipped inside the installed package (``cifake/conf``,
which pyproject.toml maps from the top-level ``conf/`` when it builds the wheel)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
_CHECKOUT_CONF = _CHECKOUT / "conf"
_SHIPPED_CONF = _PACKAGE / "conf"


def config_dir() -> Path:
    """The folder holding ``train.yaml``, ``evaluate.yaml``, ... and the config groups: the
    checkout's ``conf/`` when cifake is imported from a checkout (``conf/`` and ``pyproject.toml``
    beside the package, as in a clone, an editable install or the Docker image), else
    ``cifake/conf`` of the installed wheel (site-packages has no pyproject.toml, so a stray
    top-level ``conf/`` installed there by something else is never taken for ours)."""
    if (_CHECKOUT_CONF / "train.yaml").is_file() and (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT_CONF
    return _SHIPPED_CONF


CONF_DIR = config_dir()
