"""A mistyped override (a config key, a group's name, a group's option) answered in one ``error:`` line that
names the nearest real one (cifake/core/overrides.py, wired into every entry point by cifake/cli.py), with
``+key=value`` offered only where a new key would be read."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cifake.core.schemas  # noqa: F401  (the schemas conf/ names, as the entry points register them)
from cifake.core.configs import config_dir
from cifake.core.overrides import override_problem, program_name
from tests.helpers.runner import one_error_line, run_script, script_env


def problem(*argv: str, job: str = "train") -> str | None:
    return override_problem(config_dir(), list(argv), job, "python train.py")


@pytest.mark.parametrize(("argv", "meant", "hint"), [
    (["modle=vgg"], "did you mean model=vgg?", "--help lists the groups"),
    (["experimnt=demo"], "did you mean experiment=demo?", "--help lists the groups"),
    (["modle=vggg"], "did you mean model=<resnet or rf or vgg>?", "--help lists the groups"),
    (["trainer.max_epoch=3"], "did you mean trainer.max_epochs=3?", "--cfg job shows every key"),
    (["max_epochs=3"], "did you mean trainer.max_epochs=3?", "--cfg job shows every key"),
    (["model=resnet", "model.net.widht=[8,16,32]"], "did you mean model.net.widths=[8,16,32]?", "--cfg job"),
    (["callbacks.gradcm.per_class=2"], "did you mean callbacks.gradcam.per_class=2?", "--cfg job"),
    (["~trainr"], "did you mean ~trainer?", "--help lists the groups"),
])
def test_a_mistyped_key_or_group_is_answered_with_the_nearest(argv: list[str], meant: str, hint: str) -> None:
    line = problem(*argv)
    assert line is not None and meant in line and hint in line, line
    assert "+" not in line  # adding the mistyped key would be read by nothing


def test_a_value_is_never_offered_in_place_of_a_config_node() -> None:
    # callbacks.progress_bar is a callback's config: `false` there is no setting (the callback is switched off
    # with null), so progress_bar=false is not pointed at it.
    assert "callbacks.progress_bar=false" not in problem("progress_bar=false")
    assert "callbacks.progress_bar=null" in problem("progress_bar=null")


def test_only_the_nearest_keys_are_offered() -> None:
    line = problem("trainer.max_epoch=3")
    assert "trainer.max_epochs=3" in line and "min_epochs" not in line  # farther than the nearest
    assert "tta.mode" not in (problem("modle=vgg", job="evaluate") or "")  # `mode` is not what `modle` meant


@pytest.mark.parametrize(("argv", "fragment"), [
    (["model=vggg"], "no option 'vggg' in the config group model: did you mean model=vgg? its options are resnet, rf, "
                     "vgg"),
    (["experiment=cpu_fst"], "did you mean experiment=cpu_fast"),
    (["-m", "model=vgg,vggg"], "no option 'vggg' in the config group model"),  # each value of a sweep
    (["hydra/launchr=slurm"], "no config group 'hydra/launchr': did you mean hydra/launcher=...?"),
])
def test_a_mistyped_option_or_group_path_is_named(argv: list[str], fragment: str) -> None:
    line = problem(*argv)
    assert line is not None and fragment in line, line


def test_a_group_the_program_does_not_choose_from() -> None:
    line = override_problem(config_dir(), ["model=vgg"], "evaluate", "python evaluate.py")
    assert line.startswith("python evaluate.py has no model group to choose from: its groups are ")
    assert "data" in line and "trainer" in line and "model," not in line


def test_a_plus_is_offered_only_where_a_new_key_is_read() -> None:
    # An argument the class takes that the YAML leaves out: a new key is passed on to the Trainer.
    line = problem("trainer.gradient_clip_algorithm=norm")
    assert "lightning.pytorch.Trainer takes gradient_clip_algorithm" in line
    assert "+trainer.gradient_clip_algorithm=norm" in line
    # A new entry of a collection of instantiated things.
    line = problem("callbacks.ema={_target_:cifake.callbacks.EMA,decay:0.999}")
    assert "add a new entry with +callbacks.ema={_target_:cifake.callbacks.EMA,decay:0.999}" in line
    # Nowhere else: not at the top (nothing reads it), not where the class takes no such argument.
    for argv in (["modle=vgg"], ["trainer.max_epoch=3"], ["trainer.foo=1"], ["seeed=1"]):
        assert "+" not in (problem(*argv) or ""), argv
    # A '+' on a key that is there already.
    assert "trainer.max_epochs is already in the config: set it without the '+' (trainer.max_epochs=3)" in problem(
        "+trainer.max_epochs=3")


def test_no_near_name_lists_what_is_there() -> None:
    line = problem("trainer.foo=1")
    assert line.startswith("no key 'trainer.foo' in the config: trainer holds accelerator, ")
    assert "_target_" not in line


def test_overrides_that_compose_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problem("model=resnet", "trainer.max_epochs=3", "+trainer.gradient_clip_algorithm=norm",
                   "++seed=1", "~logger", "experiment=demo", "-m", "seed=0,1") is None
    assert problem("+notes=a", "notes=b", "+callbacks.ema={_target_:cifake.callbacks.EMA,decay:0.9}",
                   "callbacks.ema.decay=0.99") is None  # keys added by a '+' and then set again
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # asked for Hydra's own answer: kept
    assert problem("modle=vgg") is None


def test_program_name() -> None:
    assert program_name("/x/train.py") == "python train.py"
    assert program_name("/venv/bin/cifake-train") == "cifake-train"


# Through the entry points, as a user runs them.

@pytest.mark.parametrize(("script", "argv", "fragments"), [
    ("train.py", ["modle=vgg"], ["no key 'modle'", "did you mean model=vgg?",
                                 "python train.py --help lists the groups"]),
    ("train.py", ["trainer.max_epoch=3"], ["did you mean trainer.max_epochs=3?"]),
    ("train.py", ["model=vggg"], ["no option 'vggg' in the config group model: did you mean model=vgg?"]),
    ("evaluate.py", ["trainer.max_epoch=3"], ["did you mean trainer.max_epochs=3?", "python evaluate.py --cfg job"]),
    ("evaluate.py", ["data=cifak"], ["did you mean data=cifake?"]),
    ("predict.py", ["photo.png", "devce=cpu"], ["no key 'devce'", "did you mean device=cpu?"]),
    ("predict.py", ["photo.png", "scoring.precison=32-true"], ["did you mean scoring.precision=32-true?"]),
])
def test_every_entry_point_answers_in_one_line(tmp_path: Path, script: str, argv: list[str],
                                               fragments: list[str], cli) -> None:
    proc = cli(script, tmp_path, *argv)
    line = one_error_line(proc, *fragments)
    assert "+" not in line and "Could not override" not in proc.stderr and "full_key" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before a run folder was made


@pytest.mark.parametrize(("script", "argv", "bad", "reason"), [
    ("export.py", ["card.train_time='it's'"], "card.train_time='it's'", "token recognition error"),
    ("train.py", ["model=vgg", "trainer.max_epochs=[1", "seed=1"], "trainer.max_epochs=[1", "no viable alternative"),
])
def test_an_override_the_grammar_cannot_read_is_named_with_how_to_quote(tmp_path: Path, script: str, argv: list[str],
                                                                        bad: str, reason: str, cli) -> None:
    proc = cli(script, tmp_path, *argv)
    one_error_line(proc, f"{bad}: not an override Hydra can read ({reason}", "in quotes", "override_grammar")
    assert "HYDRA_FULL_ERROR" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_console_script_names_itself(tmp_path: Path) -> None:
    script = shutil.which("cifake-train", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("cifake-train is not installed beside this interpreter")
    proc = subprocess.run([script, "modle=vgg"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=script_env())
    one_error_line(proc, "did you mean model=vgg? cifake-train --help lists the groups")


def test_a_sweep_with_a_mistyped_option_runs_nothing(tmp_path: Path) -> None:
    proc = run_script("train.py", tmp_path, "-m", "experiment=demo,demoo", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    one_error_line(proc, "no option 'demoo' in the config group experiment: did you mean experiment=demo?")
    assert [p.name for p in (tmp_path / "sweep").iterdir()] == ["multirun.yaml"]  # no job started


def test_a_mistyped_key_added_with_a_plus_is_named_with_the_class_settings(tmp_path: Path, cli) -> None:
    """``+`` adds the key, so the config composes; the class it reaches refuses it, in one line."""
    proc = cli("train.py", tmp_path, "+model.net.dropuot=0.1")
    line = one_error_line(proc, "VGG takes no setting 'dropuot': did you mean dropouts", "--cfg job")
    assert "Error executing job" not in proc.stderr and "full_key" not in proc.stderr, line


def test_a_call_inside_a_constructor_that_refuses_a_keyword_stays_a_bug() -> None:
    from hydra.errors import InstantiationException

    from cifake.core.errors import user_message

    def constructor_with_a_bug() -> None:
        try:
            raise TypeError("helper() got an unexpected keyword argument 'x'")
        except TypeError as err:
            raise InstantiationException("Error in call to target 'cifake.models.vgg.VGG':\nTypeError(...)") from err

    with pytest.raises(InstantiationException) as caught:
        constructor_with_a_bug()
    assert user_message(caught.value) is None  # its traceback is shown: not the user's to fix
