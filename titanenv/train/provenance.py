"""What a training job ran with, printed at its start and kept beside its run record.

Rank 0 of every job (and of ``train.run``) writes ``ran-<job id>.json``
(``ran.json`` without Slurm) into the run directory: torch with its CUDA and
NCCL versions, TorchTitan's version and commit, Python, the CPU
architecture, the container image and its digest, this repository's commit,
and TorchTitan's resolved configuration (what the original printed with
``--job.print_args``). The submission's ``run.json`` is never rewritten by a
job, which may start before submission has written it; :func:`titanenv.runs.read_ran` reads these files back for the record's readers.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

# Where the runtimes say which image a process runs in.
_IMAGE_VARIABLES = (("APPTAINER_CONTAINER", "apptainer"), ("SINGULARITY_CONTAINER", "singularity"))


def run_dir_of(toml: Path) -> Path:
    """The run directory of a resolved TOML: ``RUN/train.toml`` (train.run) or ``RUN.train.toml`` (train.submit)."""
    if toml.name == "train.toml":
        return toml.parent
    return toml.with_name(toml.name.removesuffix(".train.toml"))


def _torch() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"version": torch.__version__, "git": getattr(torch.version, "git_version", None),
                             "cuda": torch.version.cuda, "nccl": None, "devices": []}
    if torch.cuda.is_available():
        nccl = torch.cuda.nccl.version()
        facts["nccl"] = ".".join(str(part) for part in nccl) if isinstance(nccl, tuple) else str(nccl)
        facts["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return facts


def _checkout_commit(package: Path) -> dict[str, Any]:
    """The git state of the checkout a package is imported from (editable install), or none (a wheel).

    Only the package's parent counts: a wheel's site-packages may well lie
    inside some other checkout (a venv in this repository).
    """
    from titanenv.git import GitProbe

    checkout = package.parent
    if (checkout / ".git").exists():
        return {"checkout": str(checkout), **GitProbe(checkout).result()}
    return {"checkout": None, "commit": None}


def _torchtitan() -> dict[str, Any]:
    from importlib import metadata

    import torchtitan

    location = Path(torchtitan.__file__).resolve().parent
    try:
        version = metadata.version("torchtitan")
    except metadata.PackageNotFoundError:
        version = getattr(torchtitan, "__version__", None)
    return {"version": version, "location": str(location), **_checkout_commit(location)}


def _container() -> dict[str, Any]:
    for variable, runtime in _IMAGE_VARIABLES:
        image = os.environ.get(variable)
        if image:
            return {"runtime": runtime, "image": image, "digest": _recorded_digest(Path(image))}
    if Path("/run/.containerenv").exists():
        return {"runtime": "podman", "image": _podman_image(), "digest": None}
    if Path("/.dockerenv").exists():
        return {"runtime": "docker", "image": None, "digest": None}
    return {"runtime": "none", "image": None, "digest": None}


def _recorded_digest(image: Path) -> str | None:
    """The digest ``container.build`` recorded beside the image file (``IMAGE.json``)."""
    try:
        return json.loads(image.with_name(image.name + ".json").read_text()).get("digest")
    except (OSError, ValueError, AttributeError):
        return None


def _podman_image() -> str | None:
    # Podman describes the container in /run/.containerenv: image="...", imageid="...".
    try:
        text = Path("/run/.containerenv").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("image="):
            return line.split("=", 1)[1].strip('"') or None
    return None


def collect(resolved_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a later reader needs to know what this process trained with."""
    import titanenv

    return {
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "nodes": os.environ.get("SLURM_JOB_NODELIST"),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "cpu_arch": platform.machine(),
        "torch": _torch(),
        "torchtitan": _torchtitan(),
        "container": _container(),
        "titanenv": _checkout_commit(Path(titanenv.__file__).resolve().parent),
        "torchtitan_config": resolved_config,
    }


def summary(facts: dict[str, Any]) -> list[str]:
    """The lines a job prints at its start."""
    torch, titan, container, ours = facts["torch"], facts["torchtitan"], facts["container"], facts["titanenv"]
    image = container["image"] or "-"
    return [
        f"torch {torch['version']} (CUDA {torch['cuda'] or '-'}, NCCL {torch['nccl'] or '-'}, "
        f"{len(torch['devices'])} GPU(s){': ' + torch['devices'][0] if torch['devices'] else ''})",
        f"torchtitan {titan['version']} at {titan['location']} (commit {_commit_label(titan)})",
        f"Python {facts['python']['version']} on {facts['cpu_arch']}, host {facts['host']}, "
        f"world size {facts['world_size']}",
        f"container {container['runtime']}: {image} (digest {container['digest'] or '-'})",
        f"titanenv commit {_commit_label(ours)}",
    ]


def _commit_label(git: dict[str, Any]) -> str:
    commit = git.get("commit")
    if not commit:
        return "- (not a git checkout)"
    return commit[:12] + (" +dirty" if git.get("dirty") else "")


def record(toml: Path, resolved_config: dict[str, Any] | None, echo=print) -> Path:  # noqa: ANN001
    """Collect, print and write this job's facts into its run directory; return the file."""
    from titanenv.files import write_json_atomic
    from titanenv.runs import ran_path

    facts = collect(resolved_config)
    path = ran_path(run_dir_of(toml), facts["slurm_job_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, facts)
    for line in summary(facts):
        echo(f"titanenv: {line}")
    if resolved_config is not None:
        # The model's layer-by-layer shape is in the file; the log gets its name and flavor.
        shown = dict(resolved_config)
        if isinstance(shown.get("model_spec"), dict):
            shown["model_spec"] = {k: v for k, v in shown["model_spec"].items() if k != "model"}
        for section, values in sorted(shown.items()):
            echo(f"titanenv: config {section}: {json.dumps(values, sort_keys=True, default=str)}")
    echo(f"titanenv: recorded in {path}")
    return path
