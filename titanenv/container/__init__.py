"""Container runtimes: file names and the command lines that run things inside them."""

from __future__ import annotations

from pathlib import Path

from titanenv.config import Config, container_stem

# Runs "$@" with the venv activated; $0 is the venv's activate script.
VENV_EXEC = 'source "$0" && exec "$@"'


def active_image(config: Config) -> Path:
    """The container in use (never the one being built)."""
    stem = container_stem(config.settings.container.name, config.settings.container.image, config.arch)
    return config.paths.container_dir / f"{stem}.sif"


def exec_argv(config: Config) -> list[str]:
    """Prefix that runs a command in the active container with the venv activated."""
    cluster = config.settings.cluster
    container = config.settings.container
    argv = [cluster.container_binary, "exec"]
    if container.gpus:
        argv.append("--nv")
    argv += [str(active_image(config)), "bash", "-c", VENV_EXEC, str(config.paths.venv_dir / "bin" / "activate")]
    return argv
