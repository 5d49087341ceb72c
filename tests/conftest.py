"""Shared fixtures: tiny generated image folders and composed Hydra configs. The factories they use, and
that test files import, are in tests/helpers/."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers import ROOT
from tests.helpers.config import compose_config
from tests.helpers.images import make_cifake_tree
from tests.helpers.runner import run_in_process


@pytest.fixture
def cifake_tree(tmp_path: Path) -> Path:
    return make_cifake_tree(tmp_path / "cifake")


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<name>.yaml`` with overrides, every output and cache under ``tmp_path``."""

    def _compose(name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
        return compose_config(name, [f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                                     *overrides])

    return _compose


@pytest.fixture
def cli(tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., subprocess.CompletedProcess]:
    """:func:`tests.helpers.runner.run_in_process`: ``cli("train.py", tmp_path, *overrides)`` as
    ``run_script`` takes it, answered by the entry script's app in this process."""
    return functools.partial(run_in_process, capfd=capfd, monkeypatch=monkeypatch)


@pytest.fixture(scope="session")
def real_cifake_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real CIFAKE files (``CIFAKE_ROOT``; skipped without it) in CIFAKE's layout, fewer of them: the first
    :data:`SUBSET_PER_CLASS` files by name of each class of each split, copied into one folder shared by the
    session. For tests that need real CIFAKE's files and layout, not its size or its accuracy."""
    import shutil

    from tests.helpers.config import real_cifake_root

    source = real_cifake_root()
    root = tmp_path_factory.mktemp("real_cifake_subset")
    for split, n in SUBSET_PER_CLASS.items():
        for cls in ("FAKE", "REAL"):
            (root / split / cls).mkdir(parents=True)
            for path in sorted((source / split / cls).iterdir())[:n]:
                shutil.copyfile(path, root / split / cls / path.name)
    return root


SUBSET_PER_CLASS = {"train": 2500, "test": 250}


# Seconds the slowest tests take on a 2-core CI machine beside the other pytest worker (measured with
# --durations; "file::test" without parameters, or "file" for each of its tests). Only for their order under
# pytest-xdist (make test: --dist loadgroup --no-loadscope-reorder, pytest_xdist_make_scheduler below): longest
# first, so that the last tests to start are short ones and both workers end together. A test not listed
# counts as DEFAULT_SECONDS.
SECONDS = {
    "test_gpu_check.py::test_the_rehearsal_runs_every_step_on_the_cpu_and_fills_every_row": 101,
    "test_real_data.py": 55.1,
    "test_gpu_check.py::test_the_bundle_installs_offline_beside_the_image_torch": 40,
    "test_experiments.py::test_local_submitit_launcher_runs_a_two_job_sweep": 34,
    "test_preemption.py::test_a_run_stopped_mid_epoch_by_sigterm_then_sigusr1_ends_where_an_unstopped_one_does": 32,
    "test_experiments.py::test_ddp_on_two_cpu_processes_trains_like_one_process_on_the_same_global_batch": 30,
    "test_experiments.py::test_ddp_as_the_readme_types_it_runs_on_two_cpu_processes": 29,
    "test_locking.py::test_two_runs_with_other_image_sizes_on_one_root_decode_side_by_side": 27,
    "test_locking.py::test_two_runs_reaching_an_archive_together_extract_and_decode_it_once": 26,
    "test_bench.py::test_bench_compares_precisions_and_layouts_for_both_networks": 26,
    "test_locking.py::test_two_demo_runs_with_other_image_sizes_each_generate_their_own_folder": 25,
    "test_serve_load.py": 24.5,
    "test_audit.py::test_real_cifake_duplicates_and_leaks": 24,
    "test_serve_browser.py::test_the_page_judges_two_images_in_headless_chromium": 24,
    "test_locking.py::test_two_demo_runs_started_together_on_an_empty_cache_generate_and_decode_once": 22,
    "test_experiments.py::test_a_killed_run_resumes_from_its_last_checkpoint": 21,
    "test_bundled.py::test_the_bundled_model_scores_real_cifake_as_its_card_says": 20,
    "test_serve_browser.py::test_serve_without_arguments_pages_the_bundled_model": 20,
    "test_disk_space.py::test_train_on_a_too_small_cache_disk_says_so_then_runs_on_a_larger_one": 16,
    "test_wheel.py": 14.1,
    "test_experiments.py::test_optuna_search_runs_trials_and_writes_the_best_parameters": 14,
    "test_flops.py::test_a_run_records_its_training_compute": 14,
    "test_ema.py::test_the_averaged_weights_validate_as_well_as_the_raw_ones_after_the_first_epoch": 13,
    "test_disk_space.py::test_a_disk_that_fills_under_tensorboard_is_one_line_and_the_events_load": 13,
    "test_experiments.py::test_dropout_multirun_leaves_one_folder_per_job_and_a_summary": 12,
    "test_flops.py::test_a_run_on_crops_counts_the_crops_flops": 12,
    "test_interrupt.py::test_ctrl_c_during_an_import_lets_it_finish_then_stops": 11,
    "test_disk_space.py::test_a_disk_that_fills_while_a_checkpoint_is_written_is_one_line_and_the_checkpoints_load": 10,
    "test_cpu_recipe.py::test_resnet_trains_on_demo_data_in_either_precision": 10,
    "test_device_transfers.py::test_a_fit_and_test_with_every_dashboard_on_device_resident_data": 10,
    "test_cpu_recipe.py::test_cpu_robust_composes_and_runs_end_to_end_on_demo_data": 10,
    "test_audit.py::test_cli_writes_the_report_and_prints_the_summary": 9,
    "test_scoring.py": 8.1,
    "test_serve_fuzz.py": 8.0,
    "test_unsure.py::test_train_stores_the_band_and_evaluate_and_export_use_it": 8,
    "test_callbacks.py::test_callbacks_run_in_trainer_test_and_leave_the_model_as_found": 8,
    "test_friendly_errors.py::test_every_entry_script_without_its_mandatory_keys": 8,
    "test_temperature.py::test_a_forest_refuses_to_store_a_temperature": 8,
    "test_experiments.py::test_a_one_cycle_run_resumed_for_more_epochs_says_so_in_one_line": 8,
    "test_forest_job.py": 4.7,
    "test_dashboards.py": 4.2,
    "test_folder.py": 3.7,
}
DEFAULT_SECONDS = 3


def _seconds(item: pytest.Item) -> float:
    file = Path(item.fspath).name
    test = re.sub(r"\[.*\]$", "", item.name)
    return SECONDS.get(f"{file}::{test}", SECONDS.get(file, DEFAULT_SECONDS))


SHARED_FIXTURE = re.compile(r"""@pytest\.fixture\([^)]*scope=["'](module|class|package)["']""")


@functools.cache
def _shares_a_fixture(file: str) -> bool:
    """Whether the test file ``file`` (a path from the root) defines a fixture kept for its module or a class."""
    return bool(SHARED_FIXTURE.search((ROOT / file).read_text()))


def _unit(nodeid: str) -> str:
    """What pytest-xdist hands a worker as one (make test's --dist loadgroup, below): the whole file when its
    tests share a module-scoped fixture, which is then built once, on one worker; else the test alone."""
    file = nodeid.split("::", 1)[0]
    return file if _shares_a_fixture(file) else nodeid


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist: the units of :func:`_unit` longest first (``SECONDS``), each file's in its order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_unit(item.nodeid), []).append(item)
    ordered = sorted(units.values(), key=lambda unit: -sum(map(_seconds, unit)))
    items[:] = [item for unit in ordered for item in unit]


def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201 (pytest-xdist's Scheduling)
    """--dist loadgroup here hands out the units of :func:`_unit` in the workers' order (longest first, with
    --no-loadscope-reorder). pytest-xdist's own loadgroup reads xdist_group marks through a node id that
    pytest 9 no longer lets it change, so it would split every file, module-scoped fixtures and all; no test
    here uses xdist_group."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFixture(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ByFixture(config, log)
