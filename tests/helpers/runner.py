"""Entry scripts and scripts/ run as a user runs them, in a fresh interpreter, and the checks on how they end."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import ROOT


def run_python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd`` (this interpreter), output captured."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# What the environment may hold that would change a script's errors: the real data set, Hydra's full tracebacks.
CHANGES_ERRORS = ("CIFAKE_ROOT", "HYDRA_FULL_ERROR")


def script_env() -> dict[str, str]:
    """This environment without :data:`CHANGES_ERRORS`."""
    return {k: v for k, v in os.environ.items() if k not in CHANGES_ERRORS}


def script_argv(script: str, tmp_path: Path, overrides: tuple[str, ...], run_dir: Path | None) -> list[str]:
    """The entry script of the checkout with ``overrides``, its run folder and cache under ``tmp_path``."""
    return [str(ROOT / script), *overrides, f"hydra.run.dir={run_dir or tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}"]


def run_script(script: str, tmp_path: Path, *overrides: str,
               run_dir: Path | None = None) -> subprocess.CompletedProcess:
    """An entry script of the checkout (``train.py``, ...) with overrides, its run folder and cache under
    ``tmp_path``, without the environment that would change its errors (``CIFAKE_ROOT``, ``HYDRA_FULL_ERROR``)."""
    return subprocess.run([sys.executable, *script_argv(script, tmp_path, overrides, run_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=script_env())


def run_in_process(script: str, tmp_path: Path, *overrides: str, run_dir: Path | None = None,
                   capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess:
    """What :func:`run_script` runs, in this process: the entry script's Hydra app (``cifake.cli.<job>``) on the
    same command line, environment and folder, its output read from this process's file descriptors and its
    ``SystemExit`` as the exit status. For the checks of a command's answer whose point is not the process itself
    (an ``error:`` line, the files a run writes), without the 10 s a new interpreter spends importing torch,
    Lightning and torchmetrics. What the app changes in the process (its logging, signal handlers, the
    thread hook) is put back. Each entry script still runs as a process elsewhere (test_friendly_errors)."""
    import cifake.cli

    job = Path(script).stem
    argv = script_argv(script, tmp_path, overrides, run_dir)
    for name in CHANGES_ERRORS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cifake.cli, "quick_exit", lambda: None)  # gc.freeze is for a process about to end
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    hook = threading.excepthook
    capfd.readouterr()
    try:
        getattr(cifake.cli, job)()
        code = 0
    except SystemExit as stop:
        code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for sig, handler in signals.items():
            signal.signal(sig, handler)
        threading.excepthook = hook
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Exit 0 (else the end of its stderr); the process, for its output."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one ``error:`` line holding each fragment, and no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, output[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    message = errors[0].removeprefix("error:").strip()
    assert output.count(message) == 1, output[-3000:]  # told once, not also by the console's log line
    return errors[0]


def load_test_module() -> ModuleType:
    """scripts/load_test.py as a module (registered, as its dataclasses need)."""
    if "load_test" in sys.modules:
        return sys.modules["load_test"]
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "scripts" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module
    spec.loader.exec_module(module)
    return module
