"""Where the Hydra configs live: the checkout's top-level ``conf/`` (the one users edit) when the
package runs from a checkout, else the copy shipped inside the installed package (``cifake/conf``,
which pyproject.toml maps from the top-level ``conf/`` when it builds the wheel)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

_PACKAGE = Path(__file__).resolve().parents[1]  # cifake/, above core/
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


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where PyYAML has it


def user_config_dirs(argv: Sequence[str]) -> list[Path]:
    """The folders a command line adds with Hydra's ``--config-dir DIR`` (``-cd DIR``,
    ``--config-dir=DIR``)."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def yaml_problem(folders: Iterable[Path]) -> str | None:
    """What is wrong with the first YAML file below ``folders`` that cannot be read or parsed
    (file, line and column, the parser's words), or ``None`` when all parse. Hydra would end in
    a traceback through its own code for such a file; this names it in one line instead."""
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")) if Path(folder).is_dir() else ():
            try:
                yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
            except UnicodeDecodeError:
                return f"{path} is not UTF-8 text; save it as UTF-8 YAML"
            except OSError as err:
                return f"cannot read the config file {path}: {err.strerror or err}"
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                return f"the config file {path} is not valid YAML{where}: {problem}; fix or remove it"
    return None
