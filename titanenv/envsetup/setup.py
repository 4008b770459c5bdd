"""``env.setup``, ``env.download`` and ``env.verify-bundle`` from the resolved configuration."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from titanenv.config import Config
from titanenv.envsetup import bundle as bundles
from titanenv.envsetup import repos as repo_ops
from titanenv.envsetup.inside import BOOT
from titanenv.errors import TitanEnvError


class SetupError(TitanEnvError):
    """Installing into the venv failed."""


def bundle_dir(config: Config) -> Path:
    return config.expand_path(config.settings.env.bundle_dir, "env.bundle_dir")


def record_paths(config: Config) -> tuple[Path, Path]:
    """Where set-up writes what it installed: ``<venv>.installed.json`` and ``<venv>.freeze.txt``."""
    venv = config.paths.venv_dir
    return venv.with_name(venv.name + ".installed.json"), venv.with_name(venv.name + ".freeze.txt")


def _spec(path: Path, extras: Sequence[str]) -> str:
    return f"{path}[{','.join(extras)}]" if extras else str(path)


def install_steps(config: Config) -> list[dict]:
    """The pip installs of set-up, in order: build backends, packages, repositories, this project."""
    env = config.settings.env
    steps: list[dict] = []
    if env.build_packages:
        steps.append({"label": "build packages " + " ".join(env.build_packages), "args": list(env.build_packages)})
    if env.pip_packages:
        steps.append({"label": " ".join(env.pip_packages), "args": list(env.pip_packages)})
    for pin in env.repos:
        if not pin.install:
            continue
        spec = _spec(config.paths.repos_dir / pin.name, pin.extras)
        steps.append({
            "label": f"{pin.name} ({'editable' if pin.editable else 'copy'})",
            "args": ["-e", spec] if pin.editable else [spec],
            "pip_args": list(pin.pip_args),
            "env": dict(pin.env),
            "skip_cuda_archs": list(pin.skip_cuda_archs),
        })
    if env.project.install:
        steps.append({
            "label": f"this project {config.repo_root} (editable)",
            "args": ["-e", _spec(config.repo_root, env.project.extras)],
            "pip_args": list(env.project.pip_args),
        })
    return steps


def _run_inside(config: Config, argv: list[str], *, venv: bool, extra_env: dict[str, str] | None = None) -> int:
    """Run ``argv`` in the active container (or on the host for runtime none), output to the terminal."""
    from titanenv import container

    invocation = container.run_invocation(config, argv, venv=venv, patched=False, hf_offline=False,
                                          extra_env=extra_env)
    if config.settings.cluster.container_runtime == "none":
        return subprocess.run(invocation.argv, env=invocation.env).returncode
    if not container.images(config).slot_state("active").present:
        raise SetupError(
            f"no active container ({container.active_image(config)}); run `invoke container.build` and "
            "`invoke container.activate` first, or use --runtime none for a host venv"
        )
    shell = container.host_shell(config)
    shell.check(invocation.env)
    return subprocess.run(shell.wrap(invocation.argv), env=invocation.env).returncode


def setup(config: Config, *, offline: bool = False, update: bool = False,
          say: Callable[[str], None] = print) -> Path:
    """Clone/update the pinned repositories and install everything into the venv; return the record."""
    env = config.settings.env
    repos_dir = config.paths.repos_dir
    repo_bundles: dict[str, Path] = {}
    wheels = bundle_dir(config) / "wheels"
    if offline:
        summary = bundles.verify(bundle_dir(config), {pin.name: pin.ref for pin in env.repos})
        say(f"offline bundle {summary.path}: {summary.files} files verified")
        repo_bundles = {pin.name: summary.path / "repos" / f"{pin.name}.bundle" for pin in env.repos}
    states = [repo_ops.sync(pin, repos_dir, update=update, bundle=repo_bundles.get(pin.name), say=say)
              for pin in env.repos]
    venv = config.paths.venv_dir
    venv.parent.mkdir(parents=True, exist_ok=True)
    record, freeze = record_paths(config)
    plan = {
        "venv": str(venv),
        "python": env.python,
        "system_site_packages": env.system_site_packages,
        "offline": offline,
        "wheels_dir": str(wheels),
        "pip_args": list(env.pip_args),
        "cuda_archs": list(config.settings.cluster.cuda_compute_capabilities),
        "steps": install_steps(config),
        "freeze_path": str(freeze),
    }
    plan_path = venv.with_name(f".{venv.name}.setup-{os.getpid()}.json")
    plan_path.write_text(json.dumps(plan, indent=2))
    extra = {"PIP_NO_INDEX": "1"} if offline else {}
    try:
        code = _run_inside(config, [env.python, "-c", BOOT, str(config.repo_root), str(plan_path)], venv=False,
                           extra_env=extra)
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
        "steps": [step["label"] for step in plan["steps"]],
        "pip_freeze": freeze.read_text().splitlines() if freeze.is_file() else [],
    }
    tmp = record.with_name(f".{record.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, record)
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
    requirements = [*env.build_packages, *env.pip_packages]
    requirements += [_spec(config.paths.repos_dir / p.name, p.extras) for p in env.repos if p.install]
    if env.project.install:
        requirements.append(_spec(config.repo_root, env.project.extras))
    args = [*env.download_args, *extra_args]
    venv_python = config.paths.venv_dir / "bin" / "python"
    use_venv = venv_python.exists()
    python = "python" if use_venv else env.python
    argv = [python, "-m", "pip", "download", "--dest", str(target / "wheels"), *args, *requirements]
    say("pip download " + shlex.join([*args, *requirements]))
    code = _run_inside(config, argv, venv=use_venv)
    if code != 0:
        raise SetupError(f"pip download into {target / 'wheels'} failed (exit {code}); see the output above")
    summary = bundles.write_manifest(target, repos_info, requirements, args)
    say(f"offline bundle {target}: {summary.wheels} wheels/archives, {len(repos_info)} repositories, "
        f"{summary.files} files checksummed in {bundles.MANIFEST}")
    return summary


def verify_bundle(config: Config) -> bundles.BundleSummary:
    env = config.settings.env
    return bundles.verify(bundle_dir(config), {pin.name: pin.ref for pin in env.repos})


__all__ = ["SetupError", "bundle_dir", "download", "install_steps", "record_paths", "setup", "verify_bundle"]
