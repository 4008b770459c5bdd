"""The software stack installs by construction: what env.setup plans, the environment its
pip steps get, and pip's own resolver over its exact requirement set.

The offline tests run env.setup for real with runtime none (as tests/env/test_setup.py
does). The `registry` tests ask the package registry (CI has PyPI) to resolve
`requirement_set()` (the function env.setup's plan is built from) for each CPU
architecture of the container machines, with the container's torch shown to
pip as a metadata-only wheel of its exact version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.env.repos import git, make_repo
from tests.helpers import REPO_ROOT, World, error_line, ok
from titanenv.config import known_machines, load_config
from titanenv.envsetup import inside, stubwheel
from titanenv.envsetup.setup import constraints, requirement_set, setup_plan

# What NGC 25.06 (the original's image) and 26.03 install as torch: neither
# satisfies torch_checkpointing 0.1.1's torch>=2.11.0 (a0 is a pre-release).
OLD_CONTAINER_TORCHES = ["2.8.0a0+5228986c39.nv25.6", "2.11.0a0+a6c236b9fd.nv26.3"]
PROBED = ["PIP_CONSTRAINT", "TRITON_LIBCUDA_PATH", "PYTORCH_VERSION", "PYTORCH_BUILD_NUMBER",
          "PYTORCH_BUILD_VERSION", "PYTORCH_HOME", "CMAKE_PREFIX_PATH"]


def machine_config(machine: str, **flags):
    return load_config(REPO_ROOT, flags={"machine": machine, "user": "alice", **flags}, environ={})


def container_machines_by_arch() -> dict[str, str]:
    """One container machine per CPU architecture (the first by name), e.g. {'aarch64': 'jpb', 'x86_64': 'jpb'}."""
    chosen: dict[str, str] = {}
    for name in sorted(known_machines(REPO_ROOT)):
        cfg = machine_config(name)
        if cfg.settings.cluster.container_runtime != "none":
            chosen.setdefault(cfg.arch, name)
    return chosen


# --- offline: the plan ----------------------------------------------------------


@pytest.mark.parametrize("machine", sorted(set(known_machines(REPO_ROOT)) - {"local"}))
def test_container_machines_reuse_the_containers_torch_and_hold_every_step_to_it(machine: str) -> None:
    cfg = machine_config(machine)
    image = cfg.settings.container.contents
    plan = setup_plan(cfg)
    assert plan["torch"] == {"version": image.torch, "from_container": True}
    assert plan["constraints"]["lines"] == [f"torch=={image.torch}"] == constraints(cfg)
    assert plan["constraints"]["path"] == f"{cfg.paths.venv_dir}.constraints.txt"
    assert plan["constraints"]["container_file"] is cfg.settings.env.container_constraints is False
    env = plan["environment"]
    assert {"PYTORCH_BUILD_*", "PYTORCH_HOME", "PYTORCH_VERSION"} <= set(env["unset"])
    assert env["triton_libcuda_path"] == "/usr/local/cuda/lib64/stubs"
    # The pinned repositories are installed from their clones, editable; their
    # PyPI releases stand for them in the resolver check, at the same version as the ref.
    for pin in cfg.settings.env.repos:
        step = next(s for s in plan["steps"] if s["label"].startswith(f"{pin.name} "))
        assert step["args"] == ["-e", str(cfg.paths.repos_dir / pin.name)]
        name, _, version = pin.release.partition("==")
        assert name and pin.ref == f"v{version}", f"env.repos[{pin.name}]: release {pin.release!r} is not ref {pin.ref}"
        assert step["requirements"] == [pin.release]
    assert {"torchtitan==0.3.0", "torchao==0.18.0", "torch_checkpointing==0.1.1"} <= set(requirement_set(cfg))
    # Nothing installs a torch: it is only ever the constraint.
    assert not [r for r in requirement_set(cfg) if r.split("=")[0].split("[")[0].strip() == "torch"]


def test_local_holds_the_venv_to_the_train_extras_cpu_torch() -> None:
    cfg = machine_config("local")
    plan = setup_plan(cfg)
    assert plan["torch"] == {"version": "2.13.0", "from_container": False}
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject, "machines/local.yaml env.torch must follow the train extra's torch pin"


def test_container_torch_without_a_container_is_one_line(world: World) -> None:
    world.settings["env"]["torch"] = "container"
    world.write()
    line = error_line(world.invoke("env.setup"))
    assert "env.torch: 'container' needs a container, and runtime none has none" in line


def test_dry_prints_the_whole_plan_and_does_nothing(world: World) -> None:
    out = ok(world.invoke("env.setup", "--dry"))
    assert f"clone alpha: {world.alpha} at v1.0 into {world.repos / 'alpha'}" in out
    assert f"venv: {world.venv} (with the system site-packages)" in out
    assert f"constraint file {world.venv}.constraints.txt: torch==2.13.0" in out
    assert f"PIP_CONSTRAINT={world.venv}.constraints.txt  (the container's own constraint file is left out)" in out
    assert "unset: BASH_ENV " in out and "PYTORCH_VERSION" in out
    assert f"-m pip install --no-index --find-links {world.wheels} tinyextra==2.0 -e {world.repos / 'alpha'} " in out
    assert not (world.root / "project").exists() and not (world.root / "scratch").exists()
    # The JUPITER plan, from here: aarch64 venv, the container's torch, nothing run.
    out = ok(world.invoke("env.setup", "--dry", "--machine", "jpb", "--offline"))
    assert "torch: the container's 2.13.0a0+9186a08b2c.nv26.7.59513937; set-up stops first" in out
    assert "env_aarch64/bin/python -m pip install --no-index --find-links" in out
    assert "TRITON_LIBCUDA_PATH=/usr/local/cuda/lib64/stubs  (if /usr/local/cuda/lib64/stubs/libcuda.so exists" in out
    assert "PIP_NO_INDEX=1" in out


# --- offline: the environment pip steps really get -------------------------------


def probe_repo(path: Path, record: Path) -> Path:
    """A repository whose build backend writes the variables it sees to ``record`` as JSON."""
    repo = make_repo(path, "probe", "1.0")
    backend = repo / "_backend.py"
    backend.write_text(backend.read_text() + f"""

_build_editable = build_editable


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    import json, os
    with open({str(record)!r}, "w") as out:
        json.dump({{name: os.environ.get(name) for name in {PROBED!r}}}, out)
    return _build_editable(wheel_directory, config_settings, metadata_directory)
""")
    git(repo, "commit", "--quiet", "-am", "probe the environment")
    git(repo, "tag", "-f", "v1.0")
    return repo


@pytest.mark.parametrize("container_constraints", [False, True])
def test_install_steps_see_exactly_the_decided_environment(world: World, tmp_path: Path,
                                                           container_constraints: bool) -> None:
    record = tmp_path / "seen.json"
    repo = probe_repo(tmp_path / "sources" / "probe", record)
    stubs = tmp_path / "cuda-stubs"
    stubs.mkdir()
    (stubs / "libcuda.so").write_text("")
    # What an NGC container brings along: its own constraint file and PyTorch build variables.
    ngc_constraint = tmp_path / "ngc-constraint.txt"
    ngc_constraint.write_text("tinyextra==2.0\n")
    container_env = {"PIP_CONSTRAINT": str(ngc_constraint), "PYTORCH_VERSION": "2.8.0a0+5228986c39",
                     "PYTORCH_BUILD_NUMBER": "0", "PYTORCH_BUILD_VERSION": "2.8.0a0", "PYTORCH_HOME": "/opt/pytorch",
                     "CMAKE_PREFIX_PATH": "/usr/local"}
    world.settings["env"]["repos"] = [{"name": "probe", "uri": str(repo), "ref": "v1.0"}]
    world.settings["env"]["container_constraints"] = container_constraints
    world.settings["container"] = {"triton_libcuda_path": str(stubs)}
    world.write()
    out = ok(world.invoke("env.setup", env=container_env))
    ours = f"{world.venv}.constraints.txt"
    assert Path(ours).read_text() == "torch==2.13.0\n"
    seen = json.loads(record.read_text())
    expected_constraint = f"{ours} {ngc_constraint}" if container_constraints else ours
    assert seen == {"PIP_CONSTRAINT": expected_constraint, "TRITON_LIBCUDA_PATH": str(stubs), "PYTORCH_VERSION": None,
                    "PYTORCH_BUILD_NUMBER": None, "PYTORCH_BUILD_VERSION": None, "PYTORCH_HOME": None,
                    "CMAKE_PREFIX_PATH": None}
    assert f"PIP_CONSTRAINT={expected_constraint}" in out
    installed = json.loads(world.venv.with_name(world.venv.name + ".installed.json").read_text())
    assert installed["constraints"] == ["torch==2.13.0"]


def test_the_container_files_constraints_bind_when_they_apply(world: World, tmp_path: Path) -> None:
    # The container pins a version the step asks otherwise: pip refuses, and says why.
    ngc_constraint = tmp_path / "ngc-constraint.txt"
    ngc_constraint.write_text("tinyextra==1.0\n")
    world.settings["env"]["container_constraints"] = True
    world.write()
    failed = world.invoke("env.setup", env={"PIP_CONSTRAINT": str(ngc_constraint)})
    assert failed.returncode == 1 and "tinyextra" in failed.stdout + failed.stderr
    world.settings["env"]["container_constraints"] = False
    world.write()
    ok(world.invoke("env.setup", env={"PIP_CONSTRAINT": str(ngc_constraint)}))


def test_another_torch_in_the_container_stops_set_up_before_anything_is_installed(tmp_path: Path) -> None:
    # The check inside the container, run for real against this interpreter's torch.
    plan = setup_plan(machine_config("local"))
    plan.update(python=sys.executable, venv=str(tmp_path / "venv"), torch={"version": "2.8.0a0", "from_container": True})
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    done = subprocess.run([sys.executable, "-c", inside.BOOT, str(REPO_ROOT), str(plan_path)],
                          capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the container's ") and "torch 2.13.0" in lines[0]
    assert "container.contents.torch says 2.8.0a0" in lines[0]
    assert not (tmp_path / "venv").exists()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture(autouse=True)
def clean_pip_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PIP_") and name not in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


# --- the registry: pip's resolver over the exact requirement set -----------------


def _pip(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def registry() -> None:
    """The package registry answers; without it, skip, except under CI=true, where it must be there."""
    try:
        reachable = _pip("index", "versions", "torch-checkpointing", timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        reachable = False
    if not reachable:
        message = "the package registry is unreachable (pip index versions torch-checkpointing failed)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI has it, so this is an error there")
        pytest.skip(message)


def platforms(arch: str, glibc: str) -> list[str]:
    """Every manylinux tag a C library of version ``glibc`` accepts (pip does not expand ``--platform``)."""
    major, minor = (int(x) for x in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]
    return [word for tag in tags for word in ("--platform", tag)]


def resolve(cfg, torch_version: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``pip install --dry-run`` of env.setup's requirement set for cfg's architecture and container Python."""
    image = cfg.settings.container.contents
    links = tmp_path / "container"
    links.mkdir(exist_ok=True)
    stubwheel.metadata_wheel(links, "torch", torch_version)
    constraint = tmp_path / "constraints.txt"
    constraint.write_text(f"torch=={torch_version}\n")
    return _pip("install", "--dry-run", "--ignore-installed", "--report", str(tmp_path / "report.json"),
                "--target", str(tmp_path / "target"), "--only-binary=:all:", *platforms(cfg.arch, image.glibc),
                "--python-version", image.python, "--find-links", str(links), "--constraint", str(constraint),
                *requirement_set(cfg))


@pytest.mark.registry
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_stack_resolves_against_the_containers_torch(arch: str, registry: None, tmp_path: Path) -> None:
    machine = container_machines_by_arch()[arch]
    cfg = machine_config(machine)
    torch = cfg.settings.container.contents.torch
    done = resolve(cfg, torch, tmp_path)
    assert done.returncode == 0, f"{machine} ({arch}): pip cannot install env.setup's requirements:\n{done.stderr[-3000:]}"
    report = json.loads((tmp_path / "report.json").read_text())
    versions = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in report["install"]}
    # The container's torch, no other; and the pins as set-up installs them.
    assert versions["torch"] == torch
    assert versions["torchtitan"] == "0.3.0" and versions["torchao"] == "0.18.0"
    assert versions["torch-checkpointing"] == "0.1.1"
    assert not [name for name in versions if name.startswith("nvidia-")], "a CUDA torch from the index crept in"


@pytest.mark.registry
@pytest.mark.parametrize("torch", OLD_CONTAINER_TORCHES)
def test_the_check_rejects_containers_whose_torch_is_too_old(torch: str, registry: None, tmp_path: Path) -> None:
    # NGC 25.06 (the original's) and 26.03: their pre-release torch is below 2.11.0.
    cfg = machine_config(container_machines_by_arch()["x86_64"])
    done = resolve(cfg, torch, tmp_path)
    assert done.returncode != 0
    assert "torch-checkpointing" in done.stderr.lower().replace("_", "-") and "ResolutionImpossible" in done.stderr


@pytest.mark.parametrize(("nvcc", "expected"), [("12.9", "7.0;8.0;9.0"), ("13.3", "8.0;9.0"), (None, "7.0;8.0;9.0")])
def test_cuda_arch_list_leaves_volta_out_from_cuda_13(nvcc: str | None, expected: str) -> None:
    # The 26.07 image's nvcc is CUDA 13.3, which refuses sm_70: builds in the venv must not ask for it.
    assert inside.cuda_arch_list(nvcc, ["7.0", "8.0", "9.0"], []) == expected
