"""The command-line entry points, one Hydra app per job: the console scripts ``cifake-train``,
``cifake-evaluate``, ``cifake-predict``, ``cifake-export``, ``cifake-audit`` and ``cifake-serve`` are these functions,
and so are the checkout's ``python train.py``, ``python evaluate.py``, ... Each composes ``<job>.yaml``
from :func:`cifake.core.configs.config_dir` (the checkout's top-level ``conf/``, else the copy shipped in
the package), so both spellings take the same config, overrides, ``--help``, ``--cfg``, ``-m`` and
``--config-dir``, and write the same run folders.

Light on purpose: a job's module (and with it torch, Lightning, ...) is imported only when the job
runs, inside the function below that names it (``import cifake.jobs.train``), so ``--help`` and
``--cfg`` answer at once and ``cifake-predict`` loads only what :mod:`cifake.jobs.predict` needs.
"""

from __future__ import annotations

import gc
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cifake.core.signals import INTERRUPTED, HeldCtrlC, ctrl_c_after_imports

try:
    with ctrl_c_after_imports():
        import hydra
        from hydra.experimental.callback import Callback
        from omegaconf import DictConfig

        from cifake.core import schemas  # noqa: F401  (registers the config schemas the YAML files name)
        from cifake.core.configs import config_dir, user_config_dirs, yaml_problem
        from cifake.core.errors import friendly_errors, report
        from cifake.core.overrides import override_problem, program_name, unparsable_override
except KeyboardInterrupt:  # Ctrl+C while the command starts: it stops, without a traceback through the imports
    raise SystemExit(INTERRUPTED) from None


# The Ctrl+C held while a command checks and composes its config (:func:`_launch`), released once Hydra starts
# the run or the sweep (:class:`OutputFolderCheck`, before any job; a launcher's jobs may run in other processes).
HELD: list[HeldCtrlC] = []


def release_ctrl_c(raise_pressed: bool = True) -> None:
    """Give Ctrl+C back to the process (:data:`HELD`), raising one that came meanwhile as ``KeyboardInterrupt``."""
    while HELD:
        HELD.pop().release(raise_pressed)


def _launch(job: str, load: Callable[[], Callable[[DictConfig], Any]]) -> None:
    """Run the job ``load()`` returns (its module imported only then: :func:`train` and the others) as a Hydra
    app on ``<job>.yaml``, a :class:`~cifake.core.errors.CifakeError` reported as one line (exit status 2).
    A Ctrl+C stops it with exit status 130 and one line wherever it comes: while the config is checked and
    composed and while the job's module imports, it is held to the end of that step (:class:`HeldCtrlC`)."""

    def task(cfg: DictConfig) -> Any:
        release_ctrl_c()  # where no Hydra callback did (hydra.callbacks replaced)
        with ctrl_c_after_imports():  # the job's module brings torch, Lightning, numpy, ...
            entry = load()
        one_console_copy()
        return friendly_errors(entry)(cfg)

    # Hydra names the job (hydra.job.name: the run's <job>.log, the app named by --help) after the last
    # dotted part of the task function's module (after the file for a script run as __main__). Named as
    # if it lived in cifake.cli.<job>, it is `train` from cifake-train and python train.py alike, not `cli`.
    task.__module__ = f"{__name__}.{job}"
    task.__name__ = task.__qualname__ = job
    HELD.append(HeldCtrlC())
    conf = config_dir()
    problem = yaml_problem([conf, *user_config_dirs(sys.argv[1:])]) or null_group(conf, sys.argv[1:])
    if problem:
        report(problem, to_log=False)  # before Hydra reads the file (no run, so no run log)
    try:
        with overrides_told(conf, job):
            hydra.main(version_base="1.3", config_path=str(conf), config_name=job)(task)()
    except KeyboardInterrupt:
        # Ctrl+C outside what a job handles itself (Lightning's fit, the server): while the job's libraries
        # import, data decodes or the test split is scored. Files are written atomically, so none is left half.
        print(f"cifake-{job}: interrupted (Ctrl+C)", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finally:
        release_ctrl_c(raise_pressed=False)  # what ended before any run (--help, --cfg, an error) tells its own
        quick_exit()


def quick_exit() -> None:
    """Let the process end in a fraction of a second instead of 2-5 s. With torch, Lightning and their
    libraries loaded, most of a command's exit went to the interpreter freeing their objects one cycle at a time
    after the last line had run. Collected once now (so every object that is garbage is finalized as usual:
    files flushed, writers closed), what is left is frozen: the collector leaves it to the operating system.
    The exit handlers (logging's, Hydra's, multiprocessing's) still run."""
    gc.collect()
    gc.freeze()


# Hydra's errors that a mistyped override ends in; their causes are OmegaConf's (a key not in a struct).
COMPOSITION_ERRORS = ("ConfigCompositionException", "MissingConfigException", "ConfigKeyError")


@contextmanager
def overrides_told(conf: Path, job: str) -> Iterator[None]:
    """Answer an override Hydra cannot compose (``trainer.max_epoch=3``, ``modle=vgg``, ``model=vggg``) with one
    ``error:`` line naming the nearest real key, group or option (:func:`cifake.core.overrides.override_problem`)
    instead of Hydra's lines, whose ``+modle=vgg`` advice would add a key nothing reads.

    Hydra reports every error of composing (and of the job) through ``hydra._internal.utils.run_and_report``,
    which prints and exits; while the block runs, each call of it first passes a composition error here. A
    command that composes pays nothing: the diagnosis runs only after Hydra has failed."""
    from hydra._internal import utils as hydra_utils

    original = hydra_utils.run_and_report

    def diagnosed(func: Any) -> Any:
        try:
            return func()
        except Exception as err:
            names = {cls.__name__ for link in (err, err.__cause__) if link is not None for cls in type(link).__mro__}
            if names & set(COMPOSITION_ERRORS):
                problem = override_problem(conf, sys.argv[1:], job, program_name(sys.argv[0]))
                if problem:
                    report(problem, to_log=False)  # no run folder yet, so no run log
            if "OverrideParseException" in names:  # Hydra's grammar refused one: say which, and how to quote
                problem = unparsable_override(sys.argv[1:])
                if problem:
                    report(problem, to_log=False)
            raise

    hydra_utils.run_and_report = lambda func: original(lambda: diagnosed(func))
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def one_console_copy() -> None:
    """Print Lightning's messages once. Its package logger prints them itself (``INFO: ...``) and passes them
    on to the root logger, which Hydra's job logging prints and writes to the run's log: without this each
    came twice on the console. Its handler stays where no root handler would take its place
    (``hydra/job_logging=disabled``, or a job that never imports Lightning)."""
    if not logging.getLogger().handlers:
        return
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        if type(handler) is logging.StreamHandler:
            lightning.removeHandler(handler)


def null_group(conf: Path, argv: list[str]) -> str | None:
    """What is wrong with ``<group>=null`` on the command line (Hydra would end in a traceback through
    its own code): a config group is left out with ``~<group>``."""
    for word in argv:
        key, _, value = word.partition("=")
        if value == "null" and not key.startswith(("~", "-")) and (conf / key.lstrip("+")).is_dir():
            return f"{word}: a config group is left out with ~{key.lstrip('+')} (e.g. ~logger: no TensorBoard)"
    return None


class OutputFolderCheck(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): before Hydra creates the run folder
    (``hydra.run.dir``) or a sweep's (``hydra.sweep.dir``), and so before any of our code runs,
    make sure it can be created and written to. Hydra would otherwise end in its own traceback.
    The config is composed by then: a Ctrl+C held meanwhile stops the command here (:func:`release_ctrl_c`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        release_ctrl_c()
        writable_folder(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        release_ctrl_c()
        writable_folder(config.hydra.sweep.dir, "hydra.sweep.dir")


def writable_folder(folder: str, key: str) -> None:
    """Create ``folder`` (the value of ``key``) and write a file in it, or report why not as one
    ``error:`` line (exit status 2)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        report(f"cannot write the run folder {folder} ({key}): {err.strerror or err}; pass {key}=<a folder you "
               "can write to>, or paths.log_dir=<one> (run folders go under it)", to_log=False)  # no run log yet


def train() -> None:
    """``cifake-train`` (``python train.py``): fit on ``train.yaml``; under a sweeper (``-m
    hparams_search=...``) each run returns ``optimized_metric`` to it."""
    def job() -> Callable[[DictConfig], Any]:
        import cifake.jobs.train

        return cifake.jobs.train.objective

    _launch("train", job)


def evaluate() -> None:
    """``cifake-evaluate`` (``python evaluate.py``): score a checkpoint on the test split."""
    def job() -> Callable[[DictConfig], Any]:
        import cifake.jobs.evaluate

        return cifake.jobs.evaluate.run

    _launch("evaluate", job)


# Hydra's options that take the next word as their value (``--info`` takes one of its topics, if given).
VALUE_OPTIONS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun",
                 "--cfg", "-c", "--package", "-p")
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def hydra_quoted(text: str) -> str:
    """``text`` as a quoted string in Hydra's override grammar (any path, spaces, commas and quotes included)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def positional_inputs(argv: list[str]) -> list[str]:
    """``argv`` with the words that are neither options nor overrides (``photo.png``, ``photos/``) gathered
    into one ``inputs=[...]`` override, so that ``cifake-predict photo.png`` works as ``inputs=photo.png``."""
    kept, files, skip = [], [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            kept.append(word)
        elif word.startswith("-"):
            kept.append(word)
            skip = word in VALUE_OPTIONS or (word == "--info" and i + 1 < len(argv) and argv[i + 1] in INFO_TOPICS)
        elif "=" in word:
            kept.append(word)
        else:
            files.append(word)
    if not files:
        return argv
    if any(word.split("=", 1)[0].lstrip("+~") == "inputs" for word in kept if "=" in word):
        report(f"images given twice: as arguments ({' '.join(files)}) and as inputs=...; give them one way",
               to_log=False)
    return [*kept, "inputs=[" + ",".join(hydra_quoted(f) for f in files) + "]"]


def predict() -> None:
    """``cifake-predict`` (``python predict.py``): REAL or FAKE for image files (``cifake-predict photo.png``
    or ``inputs=...``), from the bundled model or any model file (``ckpt_path=...``)."""
    sys.argv[1:] = positional_inputs(sys.argv[1:])
    def job() -> Callable[[DictConfig], Any]:
        import cifake.jobs.predict

        return cifake.jobs.predict.run

    _launch("predict", job)


def export() -> None:
    """``cifake-export`` (``python export.py``): a checkpoint to ``model.onnx`` and ``model.json``."""
    def job() -> Callable[[DictConfig], Any]:
        import cifake.jobs.export

        return cifake.jobs.export.run

    _launch("export", job)


def audit() -> None:
    """``cifake-audit`` (``python audit.py``): duplicates and train/test leaks in the data set."""
    def job() -> Callable[[DictConfig], Any]:
        import cifake.jobs.audit

        return cifake.jobs.audit.run

    _launch("audit", job)


def serve() -> None:
    """``cifake-serve`` (``python serve.py``): a LitServe server and web page for any model file."""
    def job() -> Callable[[DictConfig], Any]:
        import cifake.jobs.serve

        return cifake.jobs.serve.run

    _launch("serve", job)
