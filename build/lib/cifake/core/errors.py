"""Errors that the entry points report as one clear message instead of a traceback, and the
wrapper that reports them (:func:`friendly_errors`).

Two kinds reach the user as one ``error:`` line with exit status 2: our own :class:`CifakeError`
(raised where the mistake is found, with what to do), and the errors of Lightning, PyTorch, Pillow
or the operating system that a user can fix, recognised by :data:`KNOWN_ERRORS` (the exception's
class and a pattern in its message, mapped to a hint). Anything else is a bug and keeps its
traceback. Light on purpose: the table names classes instead of importing them.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("cifake")
T = TypeVar("T")


class CifakeError(Exception):
    """Base class: something the user can fix (data, config, checkpoint)."""


class DataError(CifakeError):
    """The dataset is missing, laid out wrongly, or holds files that cannot be used."""


class DiskSpaceError(DataError):
    """A file would not fit on its disk: what it needs, what is free, which folder to move."""


class ConfigError(CifakeError, ValueError):
    """A configuration value is missing, of the wrong kind or out of range (also a ``ValueError``,
    so library callers can catch it as one)."""


class ModelFileError(ConfigError):
    """A model file is missing, empty, damaged, of the wrong kind for the job, or holds something
    that is refused unread (such as a pickle that would run code)."""


def require(cfg: DictConfig, key: str, hint: str) -> Any:
    """``cfg[key]``, or a :class:`ConfigError` with ``hint`` when it was left as ``???``."""
    if OmegaConf.is_missing(cfg, key):
        raise ConfigError(f"{key} is required: {hint}")
    return cfg[key]


@dataclass(frozen=True)
class KnownError:
    """A foreign exception a user can fix: one whose class (or a base class) is named ``kind`` and
    whose message matches ``pattern`` (``re.search``). ``hint`` is what the user reads; it may use
    ``{message}`` (the original message on one line) and ``{filename}`` (an ``OSError``'s file).
    ``context``: it is told also when it was being handled as another error was raised (``__context__``),
    for a cause that breaks whatever runs after it: a full disk makes the writer's own clean-up fail."""

    kind: str
    pattern: str
    hint: str
    context: bool = False


_FOLDERS = ("choose another folder: hydra.run.dir or paths.log_dir for run folders, paths.cache_dir "
            "(or CIFAKE_CACHE_DIR) for the data caches")
_GPU = ("this run asks for a GPU (trainer.accelerator=gpu, from the experiment or an override) but PyTorch "
        "finds none: add trainer.accelerator=cpu to train on the CPU (far slower: an epoch of the report's VGG "
        "takes about 19 minutes on 2 cores), or run it on a machine with CUDA")
_GPU_SCORING = ("this run asks for a GPU but PyTorch finds none ({message}): pass device=cpu to predict.py, "
                "trainer.accelerator=cpu to evaluate.py or train.py, or run it on a machine with CUDA")

# Matched in order against each exception of the chain (the raised one first, then its causes:
# Hydra's instantiate raises its own from a constructor's error; then, for rows with context=True,
# the exceptions being handled when one was raised: torch's checkpoint writer fails with its own
# RuntimeError while handling the full disk's OSError).
KNOWN_ERRORS: tuple[KnownError, ...] = (
    KnownError("MisconfigurationException", r"No supported gpu backend found|can not run on your system", _GPU),
    KnownError("RuntimeError", r"Found no NVIDIA driver|Torch not compiled with CUDA enabled|No CUDA GPUs are "
               r"available", _GPU_SCORING),
    KnownError("MisconfigurationException", r"You requested gpu",
               "trainer.devices asks for more GPUs than this machine has ({message}): pass trainer.devices=<at most "
               "that many>, or trainer.devices=auto for all of them"),
    KnownError("MisconfigurationException", r"`devices` selected with",
               "trainer.devices is out of range ({message}): pass a number of devices from 1 up to the machine's"),
    KnownError("OutOfMemoryError", r"out of memory",
               "the GPU ran out of memory: lower data.batch_size (or data.eval_batch_size), or set "
               "data.on_device=false to keep the decoded images in host memory"),
    KnownError("OSError", r"\[Errno 28\]",
               "no space left on the disk that holds {filename}: free some space there, or " + _FOLDERS, context=True),
    KnownError("RuntimeError", r"PytorchStreamWriter failed writing file",
               "a checkpoint could not be written ({message}); most often its disk is full: free some space "
               "there, or choose another folder with hydra.run.dir or paths.log_dir"),
    KnownError("OSError", r"\[Errno (1|13)\]",
               "permission denied for {filename}: make it readable (and its folder writable) for this user, or "
               + _FOLDERS),
    KnownError("OSError", r"\[Errno 30\]", "{filename} is on a read-only file system: " + _FOLDERS),
    KnownError("BrokenProcessPool", r"",
               "a decoding process was killed by the system (out of memory, or a full disk under paths.cache_dir): "
               "free memory or space, or pass data.decode_workers=1 to decode in one process"),
)


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err``, then the exceptions it was raised from (``raise ... from``), each once. Not those
    it was raised while handling: a bug in an ``except`` block keeps its traceback."""
    yield from (link for link, handled in _links(err) if not handled)


def _links(err: BaseException | None) -> Iterator[tuple[BaseException, bool]]:
    """Every exception of ``err``'s chain, each once, both ways: causes (``raise ... from``) first, then
    what was being handled when it was raised (``__context__``, unless ``from`` or ``from None``
    hid it), each with whether the path to it went through such a context."""
    seen: set[int] = set()
    todo = [(err, False)]
    while todo:
        link, handled = todo.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link, handled
        if not link.__suppress_context__:
            todo.append((link.__context__, True))
        todo.append((link.__cause__, handled))  # popped first: causes before contexts


def _one_line(text: str) -> str:
    return " ".join(text.split())


def known_error(err: BaseException) -> tuple[KnownError, BaseException] | None:
    """The first :data:`KNOWN_ERRORS` entry that an exception of ``err``'s chain matches, with
    that exception; ``None`` when none does."""
    for link, handled in _links(err):
        names = {cls.__name__ for cls in type(link).__mro__}
        for known in KNOWN_ERRORS:
            if (known.context or not handled) and known.kind in names and re.search(known.pattern, str(link)):
                return known, link
    return None


def _cifake_cause(err: BaseException) -> CifakeError | None:
    """The :class:`CifakeError` behind ``err``: itself, or one that Hydra's ``instantiate``
    wrapped in an ``InstantiationException`` (raised from a constructor)."""
    return next((link for link in _chain(err) if isinstance(link, CifakeError)), None)


def _unknown_setting(err: BaseException) -> str | None:
    """A class that Hydra's ``instantiate`` gave a setting it does not take (a key added with ``+`` and
    misspelt: ``+model.net.dropuot=0.1``), named with the class's nearest parameters; ``None`` otherwise."""
    links = list(_chain(err))
    targets = [re.search(r"Error in call to target '([\w.]+)'", str(link)) for link in links
               if type(link).__name__ == "InstantiationException"]
    if not any(targets):
        return None
    target = [m.group(1) for m in targets if m][-1]  # the innermost call: the class that refused the key
    # Refused by the target's own signature, not by a call inside it (a bug keeps its traceback).
    refused = rf"\b{re.escape(target.rpartition('.')[2])}(\.__init__)?\(\) got an unexpected keyword argument '(\w+)'"
    unexpected = next((m for link in links if isinstance(link, TypeError)
                       for m in [re.search(refused, str(link))] if m), None)
    if unexpected is None:
        return None
    key, nearest = unexpected.group(2), []
    try:
        module, _, name = target.rpartition(".")
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        nearest = difflib.get_close_matches(key, [p for p in params if p not in ("self", "args", "kwargs")], n=3)
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    meant = f": did you mean {' or '.join(nearest)}?" if nearest else ""
    return (f"{target.rpartition('.')[2]} takes no setting '{key}'{meant} Fix the key's name, or drop the override "
            "that added it (+...); --cfg job prints the composed config")


def user_message(err: BaseException) -> str | None:
    """What to tell the user about ``err``: the message of its :class:`CifakeError`, else the hint
    of its :func:`known_error` (or of a setting a class does not take); ``None`` for a bug."""
    ours = _cifake_cause(err)
    if ours is not None:
        return str(ours)
    unknown = _unknown_setting(err)
    if unknown is not None:
        return unknown
    found = known_error(err)
    if found is None:
        return None
    known, link = found
    filename = getattr(link, "filename", None)
    return known.hint.format(message=_one_line(str(link)),
                             filename=filename if filename is not None else "one of the run's files")


def _log_to_files(message: str, err: BaseException | None = None) -> None:
    """Record ``message`` as an error in the log files that the root logger writes (the run's
    ``<job>.log``), not on the console, where :func:`report` prints it once; with ``err``, its
    traceback too."""
    exc_info = None if err is None else (type(err), err, err.__traceback__)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def report(message: str, to_log: bool = True, err: BaseException | None = None) -> NoReturn:
    """Print ``message`` after ``error:`` (and, with ``to_log``, to the run's log file, with ``err``'s
    traceback when given) and exit with status 2."""
    if to_log:
        _log_to_files(message, err)
    print(f"\nerror: {message}", file=sys.stderr)
    raise SystemExit(2)


def _thread_hook(previous: Callable[[Any], object]) -> Callable[[Any], None]:
    """A ``threading.excepthook`` that tells an error the user can fix, raised in a library's background
    thread, in one warning line (its traceback in the run's log) instead of a traceback on the console:
    TensorBoard's event writer meets a full disk there, then hands the error to the main thread, which
    ends the run with its ``error:`` line. Any other error goes to ``previous``."""
    def hook(args: Any) -> None:
        message = None if args.exc_value is None else user_message(args.exc_value)
        if message is None:
            previous(args)
            return
        name = getattr(args.thread, "name", "a thread")
        record = log.makeRecord(log.name, logging.WARNING, __file__, 0, "%s stopped: %s", (name, message),
                                (args.exc_type, args.exc_value, args.exc_traceback))
        for handler in logging.getLogger().handlers:  # the traceback into the run's log file only
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)
        # The raw error on one line, not the hint: the main thread, meeting it, ends the run with that.
        print(f"warning: the background thread {name} stopped: {type(args.exc_value).__name__}: "
              f"{_one_line(str(args.exc_value))} (its traceback is in the run's log)", file=sys.stderr)

    return hook


def friendly_errors(job: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Report an error the user can fix (see :func:`user_message`) as one clear line and exit
    with status 2 (for entry scripts); any other error propagates with its traceback."""

    @functools.wraps(job)
    def wrapper(cfg: DictConfig) -> T:
        previous = threading.excepthook
        threading.excepthook = _thread_hook(previous)
        try:
            return job(cfg)
        except Exception as raised:
            message = user_message(raised)
            if message is None:
                raise
            found = known_error(raised)
            # Told through a context (a full disk behind another library's error): that error may also be
            # a bug, so its traceback goes to the run's log, though not to the console.
            behind = found is not None and _cifake_cause(raised) is None and found[1] not in _chain(raised)
            report(message, err=raised if behind else None)
        finally:
            threading.excepthook = previous

    return wrapper
