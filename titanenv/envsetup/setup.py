"""``env.setup``, ``env.download`` and ``env.verify-bundle`` from the resolved configuration."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from titanenv.config import Config
from titanenv.envsetup import bundle as bundles
from titanenv.envsetup import repos as repo_ops
from titanenv.envsetup import stubwheel
from titanenv.envsetup.inside import BOOT
from titanenv.errors import ConfigError, TitanEnvError
from titanenv.files import write_text_atomic


class SetupError(TitanEnvError):
    """Installing into the venv failed."""


def bundle_dir(config: Config) -> Path:
    return config.expand_path(config.settings.env.bundle_dir, "env.bundle_dir")


def record_paths(config: Config) -> tuple[Path, Path]:
    """Where set-up writes what it installed: ``<venv>.installed.json`` and ``<venv>.freeze.txt``."""
    venv = config.paths.venv_dir
    return venv.with_name(venv.name + ".installed.json"), venv.with_name(venv.name + ".freeze.txt")


def constraints_path(config: Config) -> Path:
    """``<venv>.constraints.txt``: the constraint file every pip step of set-up gets."""
    venv = config.paths.venv_dir
    return venv.with_name(venv.name + ".constraints.txt")


def torch_pin(config: Config) -> tuple[str, bool]:
    """The torch version the venv runs, and whether it is the container's own (checked, never installed)."""
    from titanenv import container

    env = config.settings.env
    if env.torch != "container":
        return env.torch, False
    if not container.uses_container(config):
        raise ConfigError("'container' needs a container, and runtime none has none; set a torch version "
                          "(machines/local.yaml sets the `train` extra's)", source=config.origin("env.torch"), key="env.torch")
    version = config.settings.container.contents.torch
    if not version:
        raise ConfigError(f"env.torch is 'container' but the torch version inside {config.settings.container.image} "
                          "is not given (pip show torch inside it)", source=config.origin("container.contents"),
                          key="container.contents.torch")
    return version, True


def constraints(config: Config) -> list[str]:
    """The lines of the constraint file: the torch the venv runs, so no step can replace it."""
    version, _ = torch_pin(config)
    return [f"torch=={version}"]


def _spec(path: Path, extras: Sequence[str]) -> str:
    return f"{path}[{','.join(extras)}]" if extras else str(path)


def install_steps(config: Config) -> list[dict]:
    """The pip installs of set-up, in order: build backends, packages, repositories, this project.

    Each step's ``requirements`` are what pip resolves for it: its own words,
    except for a repository, whose clone does not exist before set-up: there
    its ``release`` on PyPI (``torchtitan==0.3.0``) stands for it, or the
    clone's path when no release is named. The stack check resolves these.
    """
    env = config.settings.env
    steps: list[dict] = []
    if env.build_packages:
        steps.append({"label": "build packages " + " ".join(env.build_packages), "args": list(env.build_packages),
                      "requirements": list(env.build_packages)})
    if env.pip_packages:
        steps.append({"label": " ".join(env.pip_packages), "args": list(env.pip_packages),
                      "requirements": list(env.pip_packages)})
    for pin in env.repos:
        if not pin.install:
            continue
        spec = _spec(config.paths.repos_dir / pin.name, pin.extras)
        release = f"{pin.release}[{','.join(pin.extras)}]" if pin.release and pin.extras else pin.release
        steps.append({
            "label": f"{pin.name} ({'editable' if pin.editable else 'copy'})",
            "args": ["-e", spec] if pin.editable else [spec],
            "requirements": [release or spec],
            "pip_args": list(pin.pip_args),
            "env": dict(pin.env),
            "skip_cuda_archs": list(pin.skip_cuda_archs),
        })
    if env.project.install:
        spec = _spec(config.repo_root, env.project.extras)
        steps.append({
            "label": f"this project {config.repo_root} (editable)",
            "args": ["-e", spec],
            "requirements": [spec],
            "pip_args": list(env.project.pip_args),
        })
    return steps


def requirement_set(config: Config) -> list[str]:
    """Everything set-up installs, as one list of requirements (see :func:`install_steps`)."""
    return [req for step in install_steps(config) for req in step["requirements"]]


def setup_plan(config: Config, *, offline: bool = False) -> dict:
    """What ``env.setup`` does inside the container: the venv, each pip step, constraints, environment.

    The same dictionary is handed to :mod:`.inside` and printed by ``env.setup --dry``.
    """
    env = config.settings.env
    container = config.settings.container
    venv = config.paths.venv_dir
    torch_version, from_container = torch_pin(config)
    constraint_file = constraints_path(config)
    _, freeze = record_paths(config)
    return {
        "venv": str(venv),
        "python": env.python,
        "system_site_packages": env.system_site_packages,
        "offline": offline,
        "wheels_dir": str(bundle_dir(config) / "wheels"),
        "pip_args": list(env.pip_args),
        "cuda_archs": list(config.settings.cluster.cuda_compute_capabilities),
        "torch": {"version": torch_version, "from_container": from_container},
        "constraints": {"path": str(constraint_file), "lines": constraints(config),
                        "container_file": env.container_constraints},
        "environment": {
            "unset": list(container.unset_env),
            "triton_libcuda_path": container.triton_libcuda_path,
            "set": {"PIP_NO_INDEX": "1"} if offline else {},
        },
        "steps": install_steps(config),
        "freeze_path": str(freeze),
    }


def describe_plan(plan: dict) -> list[str]:
    """``plan`` as the lines ``env.setup --dry`` prints: every command and variable as it will be."""
    from titanenv.envsetup.inside import pip_argv, pip_constraint, steps_to_run

    venv = plan["venv"]
    torch = plan["torch"]
    cons = plan["constraints"]
    env = plan["environment"]
    lines = [f"venv: {venv} ({'with' if plan['system_site_packages'] else 'without'} the system site-packages)",
             f"python: {plan['python']}"]
    if torch["from_container"]:
        lines.append(f"torch: the container's {torch['version']}; set-up stops first if the container holds another")
    else:
        lines.append(f"torch: {torch['version']}, installed by pip where a requirement needs it")
    lines.append(f"constraint file {cons['path']}: " + " ".join(cons["lines"]))
    container_file = "$PIP_CONSTRAINT (the container's own file, if it sets one)"
    lines.append("PIP_CONSTRAINT=" + pip_constraint(plan, container_file)
                 + ("" if cons["container_file"] else "  (the container's own constraint file is left out)"))
    if env["unset"]:
        lines.append("unset: " + " ".join(env["unset"]))
    if env["triton_libcuda_path"]:
        path = env["triton_libcuda_path"]
        lines.append(f"TRITON_LIBCUDA_PATH={path}  (if {path}/libcuda.so exists there)")
    for name, value in env["set"].items():
        lines.append(f"{name}={value}")
    for step in steps_to_run(plan):
        words = [f"{k}={v}" for k, v in step.get("env", {}).items()]
        if step.get("skip_cuda_archs"):
            words.append(f"(TORCH_CUDA_ARCH_LIST without {', '.join(step['skip_cuda_archs'])})")
        words.append(shlex.join(pip_argv(Path(venv), step, plan)))
        lines.append(f"pip step ({step['label']}): " + " ".join(words))
    lines.append(f"then: pip freeze --local > {plan['freeze_path']}")
    return lines


def _run_inside(config: Config, argv: list[str], *, venv: bool, extra_env: dict[str, str] | None = None) -> int:
    """Run ``argv`` in the active container (or on the host for runtime none), output to the terminal."""
    from titanenv import container

    invocation = container.run_invocation(config, argv, venv=venv, patched=False, hf_offline=False,
                                          extra_env=extra_env)
    if not container.uses_container(config):
        return subprocess.run(invocation.argv, env=invocation.env).returncode
    if not container.images(config).slot_state("active").present:
        raise SetupError(
            f"no active container ({container.active_image(config)}); run `invoke container.build` and "
            "`invoke container.activate` first, or use --runtime none for a host venv"
        )
    shell = container.host_shell(config)
    shell.check(invocation.env)
    return subprocess.run(shell.wrap(invocation.argv), env=invocation.env).returncode


def setup(config: Config, *, offline: bool = False, update: bool = False, dry: bool = False,
          say: Callable[[str], None] = print) -> Path | None:
    """Clone/update the pinned repositories and install everything into the venv; return the record.

    ``dry``: print the plan and do nothing else (no clone, no venv, no file).
    """
    env = config.settings.env
    repos_dir = config.paths.repos_dir
    repo_bundles: dict[str, Path] = {}
    if dry:
        for pin in env.repos:
            say(f"clone {pin.name}: {pin.uri} at {pin.ref} into {repos_dir / pin.name}"
                + (" (from the offline bundle)" if offline else ""))
        for line in describe_plan(setup_plan(config, offline=offline)):
            say(line)
        return None
    if offline:
        summary = bundles.verify(bundle_dir(config), {pin.name: pin.ref for pin in env.repos})
        say(f"offline bundle {summary.path}: {summary.files} files verified")
        repo_bundles = {pin.name: summary.path / "repos" / f"{pin.name}.bundle" for pin in env.repos}
    states = [repo_ops.sync(pin, repos_dir, update=update, bundle=repo_bundles.get(pin.name), say=say)
              for pin in env.repos]
    venv = config.paths.venv_dir
    plan = setup_plan(config, offline=offline)
    venv.parent.mkdir(parents=True, exist_ok=True)
    record, freeze = record_paths(config)
    write_text_atomic(Path(plan["constraints"]["path"]), "\n".join(plan["constraints"]["lines"]) + "\n")
    plan_path = venv.with_name(f".{venv.name}.setup-{os.getpid()}.json")
    plan_path.write_text(json.dumps(plan, indent=2))
    try:
        code = _run_inside(config, [env.python, "-c", BOOT, str(config.repo_root), str(plan_path)], venv=False,
                           extra_env=plan["environment"]["set"])
    finally:
        plan_path.unlink(missing_ok=True)
    if code != 0:
        raise SetupError(f"installing into {venv} failed (exit {code}); see the output above")
    data = {
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": config.machine,
        "runtime": config.settings.cluster.container_runtime,
        "offline": offline,
        "venv": str(venv),
        "repos": [state.__dict__ for state in states],
        "torch": plan["torch"],
        "constraints": plan["constraints"]["lines"],
        "steps": [step["label"] for step in plan["steps"]],
        "pip_freeze": freeze.read_text().splitlines() if freeze.is_file() else [],
    }
    write_text_atomic(record, json.dumps(data, indent=2) + "\n")
    say(f"installed into {venv}; what got installed: {record}")
    return record


def download(config: Config, extra_args: Sequence[str] = (), *, say: Callable[[str], None] = print) -> bundles.BundleSummary:
    """Fill the offline bundle: repository bundles, then every wheel set-up needs."""
    env = config.settings.env
    target = bundle_dir(config)
    (target / "wheels").mkdir(parents=True, exist_ok=True)
    repos_info = {}
    for pin in env.repos:
        state = repo_ops.sync(pin, config.paths.repos_dir, say=say)
        repo_ops.bundle_repo(Path(state.path), target / "repos" / f"{pin.name}.bundle")
        repos_info[pin.name] = {"uri": pin.uri, "ref": pin.ref, "commit": state.commit}
        say(f"{pin.name}: bundled {pin.ref}")
    requirements = [word for step in install_steps(config) for word in step["args"] if word != "-e"]
    args = [*env.download_args, *extra_args]
    venv_python = config.paths.venv_dir / "bin" / "python"
    use_venv = venv_python.exists()
    python = "python" if use_venv else env.python
    # The same constraints as set-up's installs. pip download ignores what is
    # installed, so the container's torch (on no index) is shown to it as a
    # metadata-only wheel, and leaves the bundle again: set-up reuses the container's.
    constraint_file = constraints_path(config)
    constraint_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(constraint_file, "\n".join(constraints(config)) + "\n")
    torch_version, from_container = torch_pin(config)
    stubs = target / ".container-stubs"
    pinned = ["--constraint", str(constraint_file)]
    if from_container:
        stubs.mkdir(exist_ok=True)
        stubwheel.metadata_wheel(stubs, "torch", torch_version)
        pinned += ["--find-links", str(stubs)]
    argv = [python, "-m", "pip", "download", "--dest", str(target / "wheels"), *pinned, *args, *requirements]
    if not env.container_constraints:
        argv = ["env", "-u", "PIP_CONSTRAINT", *argv]
    say("pip download " + shlex.join([*pinned, *args, *requirements]))
    try:
        code = _run_inside(config, argv, venv=use_venv)
    finally:
        shutil.rmtree(stubs, ignore_errors=True)
        for wheel in (target / "wheels").glob("*.whl"):
            if stubwheel.is_stub(wheel):
                wheel.unlink()
    if code != 0:
        raise SetupError(f"pip download into {target / 'wheels'} failed (exit {code}); see the output above")
    summary = bundles.write_manifest(target, repos_info, requirements, args)
    say(f"offline bundle {target}: {summary.wheels} wheels/archives, {len(repos_info)} repositories, "
        f"{summary.files} files checksummed in {bundles.MANIFEST}")
    return summary


def verify_bundle(config: Config) -> bundles.BundleSummary:
    env = config.settings.env
    return bundles.verify(bundle_dir(config), {pin.name: pin.ref for pin in env.repos})


__all__ = ["SetupError", "bundle_dir", "constraints", "constraints_path", "describe_plan", "download", "install_steps",
           "record_paths", "requirement_set", "setup", "setup_plan", "torch_pin", "verify_bundle"]
