"""Directories derived from the configuration, and the cache variables pointed into them.

The layout follows the original environment: long-lived things (cloned
repositories) under ``<project root>/<project>/<user>/<env>``, everything else
(venv per CPU architecture, data, checkpoints, containers, offline downloads,
caches) under ``<scratch root>/<project>/<user>/<env>``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Mapping

from titanenv.errors import ConfigError


@dataclass(frozen=True)
class Paths:
    project_dir: Path
    scratch_dir: Path
    repos_dir: Path
    venv_dir: Path
    data_dir: Path
    checkpoint_dir: Path
    runs_dir: Path
    container_dir: Path
    container_build_dir: Path
    offline_dir: Path
    cache_dir: Path

    def as_dict(self) -> dict[str, Path]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PATH_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Paths))


def placeholders(template: str) -> list[str]:
    """The ``{names}`` a template refers to."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from None


def expand_template(template: str, values: Mapping[str, object], *, key: str, source: str | None) -> str:
    """Fill ``{name}`` placeholders from ``values``; unknown names are a ConfigError."""
    try:
        names = placeholders(template)
    except ValueError as exc:
        raise ConfigError(str(exc), source=source, key=key) from None
    for name in names:
        if name not in values:
            known = ", ".join(sorted(values))
            raise ConfigError(
                f"unknown placeholder {{{name}}} (known: {known})", source=source, key=key
            )
    return template.format_map(dict(values))


def path_problem(path: str) -> str | None:
    """Why ``path`` can never exist on this file system, or None.

    Catches NUL bytes, relative paths, and paths below an existing
    non-directory (``/etc/passwd/data``). Missing directories are fine: they
    are created when needed.
    """
    if "\x00" in path:
        return "contains a NUL byte"
    if not PurePosixPath(path).is_absolute():
        return f"{path!r} is not absolute"
    probe = Path(path)
    for ancestor in [probe, *probe.parents]:
        try:
            if ancestor.exists():
                if ancestor != probe and not ancestor.is_dir():
                    return f"{path!r} cannot exist: {str(ancestor)!r} is not a directory"
                return None
        except OSError as exc:  # e.g. name too long
            return f"{path!r} cannot exist: {exc.strerror}"
    return None


def container_stem(name: str, image: str, arch: str) -> str:
    """File stem of a container: name, image URI tail, CPU architecture.

    ``torchtitan`` + ``docker://nvcr.io/nvidia/pytorch:25.06-py3`` + x86_64
    gives ``torchtitan_pytorch_25.06-py3_x86_64``, as in the original.
    """
    tail = image.rstrip("/").rsplit("/", 1)[-1].replace(":", "_").replace("@", "_")
    return f"{name}_{tail}_{arch}"


def cache_environment(cache_dir: Path) -> dict[str, str]:
    """Every cache variable of pip, Triton, PyTorch, HuggingFace and Apptainer, under ``cache_dir``."""
    pip = cache_dir / "pip"
    triton = cache_dir / "triton"
    torch = cache_dir / "torch"
    hf = cache_dir / "huggingface"
    apptainer = cache_dir / "apptainer"
    apptainer_tmp = cache_dir / "apptainer-tmp"
    env = {
        "PIP_CACHE_DIR": pip,
        "TRITON_HOME": triton,
        # Older Triton releases read only this one.
        "TRITON_CACHE_DIR": triton / ".triton" / "cache",
        "PYTORCH_KERNEL_CACHE_PATH": torch / "kernels",
        "TORCH_HOME": torch / "hub",
        "TORCH_EXTENSIONS_DIR": torch / "torch_extensions",
        "TORCHINDUCTOR_CACHE_DIR": torch / "inductor",
        "HF_HOME": hf,
        "HF_ASSETS_CACHE": hf / "assets",
        "HF_DATASETS_CACHE": hf / "datasets",
        "HF_EVALUATE_CACHE": hf / "evaluate",
        "HF_HUB_CACHE": hf / "hub",
        "HF_METRICS_CACHE": hf / "metrics",
        "HF_MODULES_CACHE": hf / "modules",
        # Older huggingface_hub releases read these names.
        "HUGGINGFACE_ASSETS_CACHE": hf / "assets",
        "HUGGINGFACE_HUB_CACHE": hf / "hub",
        "APPTAINER_CACHEDIR": apptainer,
        "APPTAINER_TMPDIR": apptainer_tmp,
        # Singularity, Apptainer's older name (BSC), reads these.
        "SINGULARITY_CACHEDIR": apptainer,
        "SINGULARITY_TMPDIR": apptainer_tmp,
    }
    return {name: str(value) for name, value in env.items()}


# Compute nodes have no internet: HuggingFace libraries run offline outside set-up.
HF_OFFLINE_ENVIRONMENT: dict[str, str] = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

