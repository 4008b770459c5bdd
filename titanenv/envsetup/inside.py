"""Create the venv and install into it; runs inside the container, standard library only.

Started as ``python3 -c BOOT <repo> <plan.json>`` by :mod:`titanenv.envsetup.setup`.
The plan lists pip steps; each runs as ``<venv>/bin/python -m pip install``,
offline with ``--no-index --find-links <wheels> --no-build-isolation``, with
``PIP_CONSTRAINT`` set to the plan's constraint file (plus the container's own
file where the plan says so). When the venv reuses the container's torch, the
installed version is checked first. Afterwards ``pip freeze`` goes next to the venv.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

# Both standard library only, like this module.
from titanenv.cudaarch import cuda_arch_list
from titanenv.files import write_text_atomic

BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from titanenv.envsetup.inside import main; sys.exit(main(sys.argv[2]))"
)


def say(message: str) -> None:
    print(f"env.setup: {message}", flush=True)


def nvcc_release() -> str | None:
    """``12.9`` from ``nvcc --version``, or None without nvcc."""
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def ensure_venv(python: str, venv: Path, system_site_packages: bool) -> None:
    if (venv / "bin" / "python").exists():
        say(f"venv {venv} exists")
        return
    say(f"creating venv {venv}")
    flags = ["--system-site-packages"] if system_site_packages else []
    has_pip = subprocess.run([python, "-c", "import pip"], capture_output=True).returncode == 0
    if system_site_packages and has_pip:
        # The container's own pip serves the venv through its system site-packages
        # (installs still land in the venv); bootstrapping another copy takes seconds.
        subprocess.run([python, "-m", "venv", *flags, "--without-pip", str(venv)], check=True)
    else:
        subprocess.run([python, "-m", "venv", *flags, str(venv)], check=True)
    check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"error: the venv {venv} has no pip (its Python {python} lacks ensurepip and pip)")


def merge_plain_steps(steps: list[dict]) -> list[dict]:
    """Join neighbouring steps without exceptions into one pip call (one resolver run, one start-up)."""
    merged: list[dict] = []
    for step in steps:
        plain = not (step.get("pip_args") or step.get("env") or step.get("skip_cuda_archs"))
        if plain and merged and merged[-1].get("_plain"):
            merged[-1]["args"] = merged[-1]["args"] + step["args"]
            merged[-1]["label"] += ", " + step["label"]
        else:
            merged.append({**step, "_plain": plain})
    return merged


def steps_to_run(plan: dict) -> list[dict]:
    """The pip calls set-up makes, in order."""
    return merge_plain_steps(plan["steps"])


def pip_argv(venv: Path, step: dict, plan: dict) -> list[str]:
    argv = [str(venv / "bin" / "python"), "-m", "pip", "install"]
    if plan["offline"]:
        argv += ["--no-index", "--find-links", plan["wheels_dir"], "--no-build-isolation"]
    return argv + plan.get("pip_args", []) + step.get("pip_args", []) + step["args"]


def pip_constraint(plan: dict, container_file: str | None) -> str:
    """``PIP_CONSTRAINT`` of every step: the plan's file, then the container's own where the plan keeps it."""
    files = [plan["constraints"]["path"]]
    if plan["constraints"]["container_file"] and container_file:
        files.append(container_file)
    return " ".join(files)


def installed_version(python: str, name: str) -> str | None:
    code = f"import importlib.metadata as m\ntry: print(m.version({name!r}))\nexcept m.PackageNotFoundError: pass"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or None


def check_torch(plan: dict) -> None:
    """Stop before anything is installed when the container's torch is not the planned one."""
    torch = plan["torch"]
    if not torch["from_container"]:
        return
    found = installed_version(plan["python"], "torch")
    if found != torch["version"]:
        raise SystemExit(
            f"error: the container's {plan['python']} has torch {found or '(none)'}, but container.contents.torch "
            f"says {torch['version']}; set container.contents to what container.image holds (nothing was installed)"
        )
    say(f"torch {found} from the container")


def run_step(venv: Path, step: dict, plan: dict) -> None:
    argv = pip_argv(venv, step, plan)
    env = dict(os.environ)
    env["PIP_CONSTRAINT"] = pip_constraint(plan, os.environ.get("PIP_CONSTRAINT"))
    env.update(step.get("env", {}))
    if plan.get("cuda_archs") is not None:
        archs = cuda_arch_list(nvcc_release(), plan["cuda_archs"], step.get("skip_cuda_archs", []))
        if archs:
            env["TORCH_CUDA_ARCH_LIST"] = archs
    say(f"installing {step['label']}")
    done = subprocess.run(argv, env=env)
    if done.returncode != 0:
        raise SystemExit(f"error: pip install of {step['label']} failed (exit {done.returncode}); see pip's output above")


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    venv = Path(plan["venv"])
    check_torch(plan)
    ensure_venv(plan["python"], venv, plan["system_site_packages"])
    say(f"PIP_CONSTRAINT={pip_constraint(plan, os.environ.get('PIP_CONSTRAINT'))}")
    for step in steps_to_run(plan):
        run_step(venv, step, plan)
    # --local: what this venv holds, not the container's packages it sees.
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--local"], capture_output=True, text=True, check=True)
    write_text_atomic(Path(plan["freeze_path"]), freeze.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1]))
