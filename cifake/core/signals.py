"""Signals and stopping, for every process of the package: Ctrl+C (SIGINT), SIGTERM (``docker stop``, systemd,
a scheduler) and the other stop signals a user names, each in the one place it is taken:

- the command line: a Ctrl+C while a command composes its config or imports its libraries stops it with exit
  status 130 and one line (:class:`HeldCtrlC`, :func:`ctrl_c_after_imports`, used by :mod:`cifake.cli`);
- training: the signals ``callbacks.preemption.signals`` names (:func:`parse_signals`), routed to Lightning's
  stop between batches by :class:`cifake.callbacks.Preemption`;
- the server (:mod:`cifake.jobs.serve`): a stop ends LitServe and every process it started (:class:`Stops`,
  :func:`workers_ignore_sigint`, :func:`hold_stops_while_forking`, :func:`stop_children`), and an inference
  worker stopped by SIGTERM ends as a finished process ends (:func:`quiet_shutdown`).

Standard library only: the command line imports it before anything else."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

INTERRUPTED = 130  # the exit status of a command stopped by Ctrl+C (128 + SIGINT), as shells report it


class HeldCtrlC:
    """A Ctrl+C (SIGINT) held from now until :meth:`release`, which raises it then as ``KeyboardInterrupt``.
    Cut in the middle, an import can leave a library half loaded (numpy without its C core), and OmegaConf's
    merge of a config can leave a node half made: the next step then fails with an error that hides the Ctrl+C
    (``'NoneType' object has no attribute '_invalidate_flags_cache'``, exit status 1). Where SIGINT is ignored
    (a background job) or cannot be handled (not the main thread), nothing is held."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous = signal.getsignal(signal.SIGINT)
        self._held = self._previous not in (signal.SIG_IGN, None)  # None: a handler set outside Python, left alone
        if self._held:
            try:
                signal.signal(signal.SIGINT, self._press)
            except ValueError:  # not the main thread
                self._held = False

    def _press(self, signum: int, frame: Any) -> None:
        self.pressed = True

    def release(self, raise_pressed: bool = True) -> None:
        """Give SIGINT its handler back (the first call only); then, if Ctrl+C came while it was held and
        ``raise_pressed``, raise ``KeyboardInterrupt``."""
        if not self._held:
            return
        self._held = False
        signal.signal(signal.SIGINT, self._previous)
        if self.pressed and raise_pressed:
            raise KeyboardInterrupt


@contextmanager
def ctrl_c_after_imports() -> Iterator[None]:
    """Hold a Ctrl+C that comes while the block imports modules until the block ends (:class:`HeldCtrlC`)."""
    held = HeldCtrlC()
    try:
        yield
    except BaseException:
        held.release(raise_pressed=False)  # the block's own error is the one to tell
        raise
    held.release()


def parse_signals(names: Sequence[str]) -> list[signal.Signals]:
    """``["SIGUSR1", ...]`` as signals; a :class:`ConfigError` names one this system lacks."""
    known = {s.name for s in signal.Signals}
    unknown = [name for name in names if name not in known]
    if unknown:
        # Imported here: the rest of this module is the standard library's, so that the command line holds
        # Ctrl+C from its first import on (cifake.core.errors brings OmegaConf).
        from cifake.core.errors import ConfigError

        raise ConfigError(f"callbacks.preemption.signals: {unknown} are not signals here; choose from "
                          f"{sorted(known)}, e.g. [SIGUSR1] for SLURM's --signal=USR1@90")
    return [signal.Signals[name] for name in names]


def quiet_shutdown() -> None:
    """Let SIGTERM, with which the server's main process stops this inference worker, end it as a
    finished process ends, running multiprocessing's finalizers: killed by the signal, it would leave
    the semaphore it made (tqdm's lock) for the resource tracker to warn about. (SIGINT, which Ctrl+C
    sends to every process of the terminal, the worker ignores from its start: the serving job,
    :mod:`cifake.jobs.serve`, starts it so.)"""

    def leave(signum: int, frame: Any) -> None:
        atexit.register(_exit_now)  # the last registered runs first: after multiprocessing's clean-up
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, leave)


def _exit_now() -> None:
    # The interpreter's own teardown of torch and the rest takes seconds, longer than LitServe waits for a
    # worker on a busy machine (5 s, then SIGKILL): nothing in it matters once the logs are flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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
