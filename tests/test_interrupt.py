"""Ctrl+C while a command starts (cifake/cli.py): it stops with exit status 130 and one line, never a
traceback through the imports or an error from a config composed halfway. Lightning's fit and the server handle
their own Ctrl+C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.runner import run_python, script_env

# Raises KeyboardInterrupt, as Ctrl+C would, when the named module is imported.
INTERRUPT_IMPORT = """
import builtins, importlib, sys
target = {target!r}
real_import, real_import_module = builtins.__import__, importlib.import_module
def stop(name):
    if name == target:
        raise KeyboardInterrupt
builtins.__import__ = lambda name, *a, **k: (stop(name), real_import(name, *a, **k))[1]
importlib.import_module = lambda name, *a, **k: (stop(name), real_import_module(name, *a, **k))[1]
sys.argv = ["evaluate.py"]
from cifake.cli import evaluate
evaluate()
"""


def test_ctrl_c_while_the_command_line_imports() -> None:
    proc = run_python("-c", INTERRUPT_IMPORT.format(target="hydra"), cwd=ROOT)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr


def test_ctrl_c_while_the_job_imports(tmp_path: Path) -> None:
    proc = run_python("-c", INTERRUPT_IMPORT.format(target="cifake.jobs.evaluate"), cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "cifake-evaluate: interrupted (Ctrl+C)"


def test_ctrl_c_one_second_into_train_py(tmp_path: Path) -> None:
    """A real SIGINT, as a terminal sends it, one second after `python train.py experiment=demo` starts: by the
    machine, Hydra is still composing the config then, or Python is loading torch and Lightning."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "experiment=demo", f"paths.log_dir={tmp_path / 'logs'}",
         f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job would ignore it
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "cifake-train: interrupted (Ctrl+C)"


# A module that gets Ctrl+C halfway through its own import, then finishes it (writes the marker).
HALFWAY_MODULE = """
import os, signal, time
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
open({marker!r}, "w").write("imported whole")
"""
INTERRUPT_HALFWAY = """
import builtins, sys
sys.path.insert(0, {folder!r})
real_import = builtins.__import__
def import_hook(name, *a, **k):
    if name == "cifake.jobs.evaluate":
        import halfway  # as if it were one of the job's libraries
    return real_import(name, *a, **k)
builtins.__import__ = import_hook
sys.argv = ["evaluate.py"]
from cifake.cli import evaluate
evaluate()
"""


# Ctrl+C while Hydra composes the config: a composition cut in the middle ended in OmegaConf's
# "'NoneType' object has no attribute '_invalidate_flags_cache'" and exit status 1 (seen one second into train.py).
INTERRUPT_COMPOSING = """
import os, signal, sys, time
from hydra._internal.config_loader_impl import ConfigLoaderImpl
real_load = ConfigLoaderImpl.load_configuration
def load(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the signal is delivered meanwhile
    config = real_load(self, *args, **kwargs)
    open({marker!r}, "w").write("composed whole")
    return config
ConfigLoaderImpl.load_configuration = load
sys.argv = ["train.py", "experiment=demo", "paths.log_dir=" + {logs!r}]
from cifake.cli import train
train()
"""


def test_ctrl_c_while_the_config_is_composed_lets_it_finish_then_stops(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_COMPOSING.format(marker=str(marker),
                                                                             logs=str(tmp_path / "logs"))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=script_env(),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert marker.read_text() == "composed whole"
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "cifake-train: interrupted (Ctrl+C)"
    assert not (tmp_path / "logs").exists()  # stopped before a run folder was made


def test_ctrl_c_during_an_import_lets_it_finish_then_stops(tmp_path: Path) -> None:
    # A library cut off halfway through its import can break the next import with an error that hides the Ctrl+C.
    marker = tmp_path / "marker"
    (tmp_path / "halfway.py").write_text(HALFWAY_MODULE.format(marker=str(marker)))
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_HALFWAY.format(folder=str(tmp_path))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=script_env(),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert marker.read_text() == "imported whole"
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "cifake-evaluate: interrupted (Ctrl+C)"
