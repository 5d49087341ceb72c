"""What is wrong with a command line's overrides when Hydra cannot compose them, said in one line
with the nearest real keys, config groups or options (``trainer.max_epoch=3``, ``modle=vgg``,
``model=vggg``), instead of Hydra's own lines ("Could not override ... To append to your config
use +modle=vgg", which would add a key nothing reads).

Only asked after Hydra has failed (:func:`cifake.cli` routes its composition errors here), so a
command that composes pays nothing. It rebuilds the search path Hydra used (the config folder, any
``--config-dir``, Hydra's own and its plugins'), looks at each override in turn against the config
groups and against the config composed with the command line's group choices, and returns ``None``
when it finds nothing it can name better than Hydra does.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# How alike two names must be to be offered as what was meant (difflib's ratio: one letter missing,
# doubled or changed in a word of eight is 0.93, a swap in one of five 0.8; unrelated short names stay out).
CLOSE = 0.75
SHOWN = 12  # names listed when none is close
# A key's last part alone must be nearer: `modle` is not `tta.mode`, `max_epochs` is `trainer.max_epochs`.
LAST_PART = 0.9
NEAR = 0.05  # names this much less alike than the nearest are left out


@dataclass(frozen=True)
class CommandLine:
    """What Hydra's own argument parser makes of ``argv``: the config to compose, the extra
    ``--config-dir`` and the overrides."""

    config_name: str
    config_dir: Path | None
    overrides: list[str]


def parse_command_line(argv: Sequence[str], config_name: str) -> CommandLine | None:
    """``argv`` read as Hydra reads it; ``None`` when Hydra's parser refuses it (Hydra says why)
    or when ``--config-path`` moves the primary config somewhere this module does not look."""
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return None
    if args.config_path is not None:
        return None
    return CommandLine(args.config_name or config_name,
                       Path(args.config_dir).resolve() if args.config_dir else None, list(args.overrides))


def program_name(argv0: str) -> str:
    """How the user started this program: ``python train.py`` for a checkout's script, else the console
    script's name (``cifake-train``)."""
    name = Path(argv0).name
    return f"python {name}" if name.endswith(".py") else name


class _Diagnosis:
    """The config groups and the composed config, for naming what an override got wrong."""

    def __init__(self, config_dir: Path, line: CommandLine, program: str) -> None:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra._internal.utils import create_config_search_path
        from hydra.core.override_parser.overrides_parser import OverridesParser

        search_path = create_config_search_path(str(config_dir))
        if line.config_dir is not None:  # where Hydra puts --config-dir
            from hydra.core.config_search_path import SearchPathQuery

            search_path.prepend(provider="command-line", path=f"file://{line.config_dir}",
                                anchor=SearchPathQuery(provider="schema"))
        self.loader = ConfigLoaderImpl(config_search_path=search_path)
        self.line, self.program = line, program
        self.overrides = OverridesParser.create().parse_overrides(line.overrides)
        self._cfg: dict[bool, DictConfig | None] = {}
        self._groups: list[str] | None = None

    # -- config groups ------------------------------------------------------------------------------

    def is_group(self, name: str) -> bool:
        return self.loader.repository.group_exists(name)

    def options(self, group: str) -> list[str]:
        return sorted(self.loader.get_group_options(group))

    def groups(self, hydra: bool = False) -> list[str]:
        """The config groups this program's config chooses from (``model``, ``debug``, ...; with ``hydra``,
        Hydra's own too: ``hydra/launcher``), as its defaults list names them; every group of the search
        path when the config cannot be composed."""
        if self._groups is None:
            from hydra.types import RunMode

            try:
                cfg = self.loader.load_configuration(self.line.config_name, [], RunMode.RUN)
                self._groups = _keys(cfg.hydra.runtime.choices)
            except Exception:  # noqa: BLE001
                self._groups = self._all_groups()
        return [n for n in self._groups if n != "hydra" and (hydra or not n.startswith("hydra/"))]

    def _all_groups(self, parent: str = "") -> list[str]:
        found = []
        for name in self.loader.list_groups(parent):
            path = f"{parent}/{name}" if parent else name
            found += [path, *self._all_groups(path)]
        return found

    # -- the composed config ------------------------------------------------------------------------

    def config(self, with_added: bool = True) -> DictConfig | None:
        """The config composed with the command line's group choices (the first of a sweep's) and, with
        ``with_added``, the keys it adds with a '+', so that the keys a choice brings (``model.net.block``
        with ``model=resnet``) are there; ``None`` when even that fails."""
        if with_added not in self._cfg:
            from hydra.types import RunMode

            choices = []
            for o in self.overrides:
                if o.package is None and not o.is_delete() and self.is_group(o.key_or_group):
                    values = _values(o)
                    if values and isinstance(values[0], str):
                        choices.append(f"{o.get_key_element()}={values[0]}")
                elif with_added and (o.is_add() or o.is_force_add()) and not o.is_sweep_override() and o.input_line:
                    choices.append(o.input_line)  # a key added here may be set again by a later override
            try:
                self._cfg[with_added] = self.loader.load_configuration(self.line.config_name, choices, RunMode.RUN)
            except Exception:  # noqa: BLE001  (a choice Hydra refuses for its own reasons: Hydra says which)
                self._cfg[with_added] = None
        return self._cfg[with_added]

    # -- the override at fault ------------------------------------------------------------------------

    def problem(self) -> str | None:
        """One line for the first override that names no real group or option, else for the first that names
        no real key; ``None`` if none does. Groups first: the keys there are depend on the choices."""
        overrides = [o for o in self.overrides if o.package is None]  # group@package: Hydra's words are precise
        for o in overrides:
            if self.is_group(o.key_or_group) and (message := self.group_problem(o)):
                return message
        for o in overrides:
            if not self.is_group(o.key_or_group) and (message := self.key_problem(o)):
                return message
        return None

    def group_problem(self, o: Any) -> str | None:
        group = o.key_or_group
        if isinstance(o.value(), dict):  # a group's content set as a mapping: Hydra handles it as keys
            return None
        if not o.is_add() and group not in self.groups(hydra=True):
            return (f"{self.program} has no {group} group to choose from: its groups are "
                    f"{', '.join(self.groups())} ({self.program} --help lists them with their options)")
        options = self.options(group)
        for value in _values(o):
            if isinstance(value, str) and value not in options:
                close = difflib.get_close_matches(value, options, n=3, cutoff=0.6)
                meant = f"did you mean {_or([f'{group}={c}' for c in close])}? " if close else ""
                return (f"no option '{value}' in the config group {group}: {meant}its options are "
                        f"{', '.join(options)} (conf/{group}/<option>.yaml)")
        return None

    def key_problem(self, o: Any) -> str | None:
        key = o.key_or_group
        if "/" in key:  # a group path, e.g. hydra/launcher
            close = _nearest(key, self.groups(hydra=True))
            meant = f"did you mean {_or([f'{c}=...' for c in close])}? " if close else ""
            return f"no config group '{key}': {meant}{self.program} --help lists the groups"
        cfg = self.config(with_added=not o.is_add())  # a '+' is checked against the config without it
        if cfg is None:
            return None
        found, parent, missing = _walk(cfg, key)
        value = _value_text(o)
        if o.is_add() and found:
            return (f"{key} is already in the config: set it without the '+' ({key}={value}), or with '++' "
                    "to set it whether or not it is there")
        if found or o.is_add() or o.is_force_add():  # a new key: Hydra adds it where it may
            return None
        return self._no_key(cfg, key, value, parent, missing, deleting=o.is_delete())

    def _no_key(self, cfg: DictConfig, key: str, value: str, parent: Any, missing: str, deleting: bool) -> str:
        """The line for ``key`` (set to ``value``, or deleted) missing below ``parent`` at ``missing``."""
        head = f"no key '{key}' in the config"
        add = None if deleting else self.addition(key, value, parent, missing)
        if add:
            return f"{head}: {add}"
        groups = _nearest(key, self.groups()) if "." not in key else []  # maybe a group: modle=vgg
        words = [f"~{g}" if deleting else f"{g}={self._option_like(g, value)}" for g in groups]
        scalar = value != "null" and not value.startswith("{")  # it cannot stand for a config node
        close = [k for k in _close_keys(cfg, key, by_last_part=not groups, scalar=scalar)
                 if k not in groups]  # a group's node
        words += [w for w in (f"~{k}" if deleting else f"{k}={value}" for k in close) if w not in words]
        if words:
            hint = f"{self.program} --help lists the groups" if groups else f"{self.program} --cfg job shows every key"
            return f"{head}: did you mean {_or(words[:3])}? {hint}"
        if "." in key and isinstance(parent, DictConfig) and not parent._is_none():
            where = key[: -len(missing) - 1] if key.endswith(missing) else key.rsplit(".", 1)[0]
            names = sorted(k for k in _keys(parent) if k != "_target_")
            listed = ", ".join(names[:SHOWN]) + (" ..." if len(names) > SHOWN else "")
            return f"{head}: {where} holds {listed} ({self.program} --cfg job shows every key)"
        return f"{head} ({self.program} --help lists the groups, {self.program} --cfg job shows every key)"

    def _option_like(self, group: str, value: str) -> str:
        """``value`` when it is one of ``group``'s options, else the options to choose from."""
        options = self.options(group)
        return value if value in options else f"<{' or '.join(options)}>"

    def addition(self, key: str, value: str, parent: Any, missing: str) -> str | None:
        """How to add ``key`` with a '+', where adding one makes sense: a new entry of a collection of
        instantiated things (``+callbacks.ema={...}``), or an argument of the class a node builds that its
        YAML leaves out (``+trainer.gradient_clip_algorithm=norm``); ``None`` elsewhere, where a new key
        would go unread."""
        if not isinstance(parent, DictConfig) or key.rsplit(".", 1)[-1] != missing or "." not in key:
            return None  # only a key directly under a node that exists
        if OmegaConf.get_type(parent) not in (dict, None):
            return None
        values = [parent._get_node(k) for k in _keys(parent)]
        if "_target_" not in parent and values and all(
                isinstance(v, DictConfig) and ("_target_" in v or v._is_none()) for v in values):
            return f"add a new entry with +{key}={value} (those there: {', '.join(_keys(parent))})"
        target = parent.get("_target_") if "_target_" in parent else None
        if isinstance(target, str) and missing in _parameters(target):
            return f"{target} takes {missing} but the config leaves it out: add it with +{key}={value}"
        return None


def _values(o: Any) -> list[Any]:
    """The values an override sets: each of a choice sweep's, or its one value (``[]`` for a range sweep)."""
    if o.is_sweep_override():
        try:
            return list(o.sweep_string_iterator())
        except Exception:  # noqa: BLE001  (range and interval sweeps hold numbers, not options)
            return []
    value = o.value()
    return [] if value is None and o.is_delete() else [value]


def _value_text(o: Any) -> str:
    """The value as the user typed it (``1e-3`` stays ``1e-3``)."""
    line = o.input_line or ""
    return line.split("=", 1)[1] if "=" in line else ""


def _keys(node: DictConfig) -> list[str]:
    """A mapping's keys, those left ``???`` included (``in`` on a DictConfig leaves them out)."""
    return [str(k) for k in node]


def _walk(cfg: DictConfig, key: str) -> tuple[bool, Any, str]:
    """Whether the dotted ``key`` is in ``cfg``; if not, the deepest node that is and the first missing part."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and not node._is_none() and part in _keys(node):
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False, node, part
    return True, node, ""


def _is_mapping(node: Any) -> bool:
    """Whether ``node`` is a config node (a mapping that is not null)."""
    return isinstance(node, DictConfig) and not node._is_none()


def _paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key below ``node`` (mappings only)."""
    if _is_mapping(node):
        for k in _keys(node):
            path = f"{prefix}.{k}" if prefix else str(k)
            yield path
            yield from _paths(node._get_node(k), path)


def _close_keys(cfg: DictConfig, key: str, by_last_part: bool, scalar: bool = False) -> list[str]:
    """The keys of ``cfg`` nearest to ``key``: dotted keys as deep and alike, else keys whose last part is
    alike (``max_epochs=3`` -> ``trainer.max_epochs``) if ``by_last_part``; only those about as near as the nearest.
    Hydra's own settings only for a ``hydra.`` key; no config node for a ``scalar`` value (``progress_bar=false``:
    ``trainer.enable_progress_bar``, not the callback ``callbacks.progress_bar``)."""
    depth = key.count(".")
    paths = [p for p in _paths(cfg) if (p == "hydra" or p.startswith("hydra.")) == key.startswith("hydra")]
    if scalar:
        paths = [p for p in paths if not _is_mapping(_walk(cfg, p)[1])]
    close = _nearest(key, [p for p in paths if p.count(".") == depth])
    if close or not by_last_part:
        return close
    lasts = {p: p.rsplit(".", 1)[-1] for p in paths}
    alike = _nearest(key.rsplit(".", 1)[-1], list(set(lasts.values())), LAST_PART)
    return [p for p, name in lasts.items() if name in alike][:3]


def _nearest(word: str, candidates: Sequence[str], cutoff: float = CLOSE) -> list[str]:
    """The candidates alike to ``word`` (difflib's ratio at least ``cutoff``), nearest first, leaving out any
    clearly farther than the nearest (``max_epoch``: ``max_epochs``, not also ``min_epochs``)."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates), reverse=True)
    scored = [(r, c) for r, c in scored if r >= cutoff]
    return [c for r, c in scored if r >= scored[0][0] - NEAR][:3] if scored else []


def _parameters(target: str) -> set[str]:
    """The keyword parameters of the class or function ``target`` names (empty when it cannot be imported)."""
    try:
        from hydra.utils import get_object

        found = get_object(target)
        return {name for name, p in inspect.signature(found).parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    except Exception:  # noqa: BLE001  (no advice rather than a second error)
        return set()


def _or(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def override_problem(config_dir: Path, argv: Sequence[str], config_name: str, program: str) -> str | None:
    """One line naming what is wrong with ``argv``'s overrides of ``config_name`` (in ``config_dir``) and
    the nearest real key, group or option, for a command Hydra could not compose; ``None`` when nothing
    is found to name (Hydra's own message stands). With ``HYDRA_FULL_ERROR=1`` Hydra's answer is kept."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return None
    line = parse_command_line(argv, config_name)
    if line is None or not line.overrides:
        return None
    try:
        return _Diagnosis(config_dir, line, program).problem()
    except Exception:  # noqa: BLE001  (an override Hydra cannot parse, a search path it refuses: Hydra says)
        return None


def unparsable_override(argv: Sequence[str]) -> str | None:
    """One line naming the first override of ``argv`` that Hydra's grammar cannot read (``key='it's'``,
    ``key=[1``) with the parser's reason and how to quote a value; ``None`` when each one parses (or with
    ``HYDRA_FULL_ERROR=1``, where Hydra's answer is kept)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    line = parse_command_line(argv, "unused")
    if line is None:
        return None
    parser = OverridesParser.create()
    for override in line.overrides:
        try:
            parser.parse_override(override)
        except HydraException as err:  # the grammar's refusal (parse_overrides wraps it in OverrideParseException)
            reason = str(err).splitlines()[0].strip()
            return (f"{override}: not an override Hydra can read ({reason}); put a value with spaces, quotes, "
                    "brackets or commas in quotes, and the whole override in the shell's other quotes: "
                    "'card.machine=\"AMD EPYC, 2 cores\"' (https://hydra.cc/docs/advanced/override_grammar/basic/)")
    return None
