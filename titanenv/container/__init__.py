"""Containers: runtimes (Apptainer, Singularity, Docker, Podman, none), images, run command lines.

- :mod:`titanenv.container.runtime`: a class per runtime that builds its
  command lines (nothing runs there);
- :mod:`titanenv.container.host`: module loads and the missing-binary check
  around every runtime command on this machine;
- :mod:`titanenv.container.images`: build, download, activate, roll back;
- :mod:`titanenv.container.session`: all of that from the resolved configuration.
"""

from titanenv.container.host import DiskFull, HostShell, RuntimeNotFound
from titanenv.container.images import ImageError, ImageLayout
from titanenv.container.runtime import (
    RUNTIME_NAMES,
    Apptainer,
    ContainerRuntime,
    Docker,
    ExecSpec,
    Mount,
    NoRuntime,
    Podman,
    Singularity,
    runtime_for,
    venv_entry,
)
from titanenv.container.session import (
    Invocation,
    NoVenv,
    active_image,
    container_environment,
    host_shell,
    images,
    job_exec_prefix,
    layout,
    mounts,
    run,
    run_invocation,
    runtime,
    uses_container,
)


__all__ = [
    "RUNTIME_NAMES", "Apptainer", "ContainerRuntime", "DiskFull", "Docker", "ExecSpec", "HostShell",
    "ImageError", "ImageLayout", "Invocation", "Mount", "NoRuntime", "NoVenv", "Podman", "RuntimeNotFound",
    "Singularity", "active_image", "container_environment", "host_shell", "images",
    "job_exec_prefix", "layout", "mounts", "run", "run_invocation", "runtime", "runtime_for", "uses_container",
    "venv_entry",
]
