"""Errors a user can fix end in one ``error:`` line with what to do (exit status 2), whoever raised
them: our code, Lightning, PyTorch or the operating system; a bug keeps its traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException

from cifake.core.errors import KNOWN_ERRORS, ConfigError, friendly_errors, known_error, user_message
from tests.helpers import ROOT
from tests.helpers.runner import one_error_line, run_script
from tests.tmpfs import mounted


def wrapped(err: BaseException) -> InstantiationException:
    """``err`` as Hydra's ``instantiate`` hands it on: inside its own exception."""
    try:
        raise InstantiationException("Error in call to target 'lightning.pytorch.trainer.trainer.Trainer'") from err
    except InstantiationException as outer:
        return outer


# One example per row of KNOWN_ERRORS, in its order, as the library raises it.
EXAMPLES: list[tuple[BaseException, str]] = [
    (wrapped(MisconfigurationException("No supported gpu backend found!")), "trainer.accelerator=cpu"),
    (RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"),
     "pass device=cpu to predict.py"),
    (wrapped(MisconfigurationException("You requested gpu: [0, 1, 2]\n But your machine only has: [0]")),
     "You requested gpu: [0, 1, 2] But your machine only has: [0]"),
    (MisconfigurationException("`devices` selected with `CPUAccelerator` should be an int > 0."), "trainer.devices"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "data.batch_size"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/cache/x.npy"), "/data/cache/x.npy"),
    (RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: "
                  "file write failed"), "hydra.run.dir"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/cache"), "permission denied for /data/cache"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), "/mnt/ro/run is on a read-only file system"),
    (BrokenProcessPool("A process in the process pool was terminated abruptly"), "data.decode_workers=1"),
]


def test_every_known_error_has_an_example() -> None:
    assert len(EXAMPLES) == len(KNOWN_ERRORS)


@pytest.mark.parametrize(("row", "example"), list(enumerate(EXAMPLES)))
def test_each_known_error_is_told_with_its_hint(row: int, example: tuple[BaseException, str]) -> None:
    err, fragment = example
    message = user_message(err)
    assert message is not None and fragment in message, message
    assert "\n" not in message
    found = known_error(err)
    assert found is not None and found[0] is KNOWN_ERRORS[row]  # its own row, not an earlier one


@pytest.mark.parametrize("bug", [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"),
    KeyError("val/acc"),
    FileNotFoundError(errno.ENOENT, "No such file or directory", "cifake/conf/x.yaml"),
    MisconfigurationException("`training_step` returned None"),
])
def test_a_bug_is_not_dressed_up(bug: BaseException) -> None:
    assert user_message(bug) is None and known_error(bug) is None

    def job(cfg):
        raise bug

    with pytest.raises(type(bug)):
        friendly_errors(job)({})


def test_a_bug_while_handling_a_known_error_keeps_its_traceback() -> None:
    def job(cfg):
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/x")
        except OSError:
            return {}["missing"]  # a bug in the handler, not a permission the user can change

    with pytest.raises(KeyError):
        friendly_errors(job)({})


def _while_the_disk_is_full(hide: bool) -> None:
    """As torch.save meets a full disk: its writer's clean-up raises its own error while handling ENOSPC."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "/run/checkpoints/last.ckpt")
    except OSError:
        if hide:
            raise RuntimeError("a bug that chose to hide what it handled") from None
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # noqa: B904


def test_an_error_raised_while_handling_a_full_disk_is_told_as_the_full_disk(tmp_path: Path, capsys) -> None:
    import logging

    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as ended:
            friendly_errors(lambda cfg: _while_the_disk_is_full(hide=False))({})
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: no space left on the disk that holds /run/checkpoints/last.ckpt")
    assert "Traceback" not in err
    logged = (tmp_path / "train.log").read_text()  # the library's error, in case it is a bug too: in the log
    assert "no space left" in logged and "Traceback" in logged and "inline_container.cc:672" in logged
    # `raise ... from None` says the handled error does not matter: then it is a bug with its traceback.
    with pytest.raises(RuntimeError, match="chose to hide"):
        friendly_errors(lambda cfg: _while_the_disk_is_full(hide=True))({})


def test_our_own_error_wins_over_the_library_error_behind_it(capsys) -> None:
    def job(cfg):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/x")
        except OSError as err:
            raise ConfigError("data.root is wrong: pass the folder") from err

    with pytest.raises(SystemExit) as ended:
        friendly_errors(job)({})
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip() == "error: data.root is wrong: pass the folder"


# -- as users meet them: the entry scripts ------------------------------------------------------


@pytest.mark.parametrize(("script", "fragment"), [
    ("train.py", "data.root"), ("evaluate.py", "data.root"), ("predict.py", "inputs is required"),
    ("export.py", "ckpt_path is required"), ("audit.py", "data.root"),
])  # serve.py has none: without ckpt_path it serves the bundled model (tests/test_bundled.py)
def test_every_entry_script_without_its_mandatory_keys(tmp_path: Path, script: str, fragment: str) -> None:
    one_error_line(run_script(script, tmp_path), fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU for experiment=reference")
def test_the_reference_experiment_on_a_machine_without_a_gpu(tmp_path: Path, cli) -> None:
    one_error_line(cli("train.py", tmp_path, "experiment=reference"), "asks for a GPU",
                   "trainer.accelerator=cpu")


def test_a_callback_set_to_a_value_says_how_to_switch_it_off(tmp_path: Path, cli) -> None:
    one_error_line(cli("train.py", tmp_path, "experiment=demo", "callbacks.progress_bar=false"),
                   "callbacks.progress_bar=false: each entry of callbacks is a config",
                   "switch this one off with callbacks.progress_bar=null")
    assert not (tmp_path / "cache").exists()  # refused before any data was generated


def test_more_devices_than_the_machine_has(tmp_path: Path, cli) -> None:
    proc = cli("train.py", tmp_path, "experiment=demo", "trainer.devices=64")
    line = one_error_line(proc, "trainer.devices")
    assert ("64 training processes" in line) if not torch.cuda.is_available() else ("more GPUs" in line)
    # The run's log keeps the error, and Lightning's lines reach the console once (through Hydra's handler).
    assert f"[ERROR] - {line.removeprefix('error:').strip()}" in (tmp_path / "run" / "train.log").read_text()
    output = proc.stdout + proc.stderr
    assert output.count("Seed set to") == 1 and "INFO: Seed set" not in output, output[-3000:]


def test_a_run_folder_that_cannot_be_written(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    if os.geteuid() == 0:  # root writes through permissions: a read-only file system refuses it too
        with mounted(folder, "ro,size=64k"):
            line = one_error_line(run_script("train.py", tmp_path, "experiment=demo", run_dir=folder / "run"))
    else:
        folder.mkdir()
        folder.chmod(0o555)
        try:
            line = one_error_line(run_script("train.py", tmp_path, "experiment=demo", run_dir=folder / "run"))
        finally:
            folder.chmod(0o755)
    assert f"cannot write the run folder {folder / 'run'} (hydra.run.dir)" in line and "paths.log_dir" in line
    assert not (tmp_path / "cache").exists()  # refused before anything ran


def test_a_sweep_folder_that_cannot_be_written(tmp_path: Path) -> None:
    with mounted(tmp_path / "locked", "ro,size=64k") as folder:
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "experiment=demo", "seed=1,2",
                               f"hydra.sweep.dir={folder / 'sweep'}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        one_error_line(proc, "hydra.sweep.dir")


@pytest.mark.parametrize(("content", "fragments"), [
    (b"# @package _global_\ndata: {batch_size: [1,\n",
     ("bad.yaml is not valid YAML, line 3, column 1", "fix or remove it")),
    (b"data:\n  batch_size: 8\n\tseed: 1\n", ("bad.yaml is not valid YAML, line 3", "tab")),
    (b"\xff\xfe: 1\n", ("bad.yaml is not UTF-8 text",)),
])
def test_a_malformed_config_file_is_named_not_traced(tmp_path: Path, content: bytes,
                                                     fragments: tuple[str, ...]) -> None:
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "bad.yaml").write_bytes(content)
    for spelling in (["--config-dir", str(tmp_path / "mine")], [f"--config-dir={tmp_path / 'mine'}"]):
        line = one_error_line(run_script("train.py", tmp_path, *spelling, "experiment=bad"), *fragments)
        assert str(tmp_path / "mine" / "experiment" / "bad.yaml") in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # refused before anything ran
