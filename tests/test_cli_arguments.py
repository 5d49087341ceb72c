"""The command line before Hydra reads it (cifake/cli.py): images given as plain arguments to
cifake-predict, and a config group set to null, which Hydra would answer with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cifake.cli import null_group, positional_inputs
from cifake.core.configs import config_dir
from tests.helpers import ROOT
from tests.helpers.runner import check, run_python


def test_plain_arguments_become_one_inputs_override() -> None:
    argv = ["a.png", "my photos/", "it's, odd.jpg", "threshold=0.3", "-cd", "my_conf", "--cfg", "job", "-m"]
    assert positional_inputs(argv) == ["threshold=0.3", "-cd", "my_conf", "--cfg", "job", "-m",
                                       "inputs=['a.png','my photos/','it\\'s, odd.jpg']"]
    assert positional_inputs(["inputs=a.png", "device=cpu"]) == ["inputs=a.png", "device=cpu"]
    assert positional_inputs(["--info", "config", "a.png"]) == ["--info", "config", "inputs=['a.png']"]


def test_images_given_twice_are_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        positional_inputs(["a.png", "inputs=b.png"])
    assert stop.value.code == 2 and "images given twice" in capsys.readouterr().err


def test_hydra_parses_the_quoted_paths_back(tmp_path: Path) -> None:
    odd = tmp_path / "it's, odd [1].png"
    code = ("import sys\nfrom cifake.cli import positional_inputs\nfrom hydra import compose, initialize_config_dir\n"
            "import cifake.core.schemas\n"
            f"with initialize_config_dir(config_dir={str(config_dir())!r}, version_base='1.3'):\n"
            f"    cfg = compose('predict', overrides=positional_inputs([{str(odd)!r}, 'b.png']))\n"
            "print(list(cfg.inputs))\n")
    proc = check(run_python("-c", code, cwd=ROOT))
    assert proc.stdout.strip() == repr([str(odd), "b.png"])


def test_a_config_group_set_to_null_is_named_with_its_fix(tmp_path: Path) -> None:
    assert null_group(config_dir(), ["logger=null"]) == ("logger=null: a config group is left out with ~logger "
                                                         "(e.g. ~logger: no TensorBoard)")
    assert null_group(config_dir(), ["seed=null", "ckpt_path=null", "~logger"]) is None
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "logger=null"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: logger=null: a config group is left out with ~logger" in proc.stderr
