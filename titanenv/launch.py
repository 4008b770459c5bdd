"""How a job step runs this project's Python on a machine: in its container or its venv."""

from __future__ import annotations

import sys

from titanenv.config import Config


def job_launcher(config: Config) -> list[str]:
    """Argument vector that prefixes a command so it runs in the machine's environment.

    In a container: the runtime's exec of the active container, host variables
    that break it removed and the venv of this CPU architecture activated; the
    command's words follow unchanged. With no container (runtime ``none``) the
    command runs as it is; see :func:`job_python` for the interpreter it uses.
    """
    if config.settings.cluster.container_runtime == "none":
        return []
    from titanenv.container import job_exec_prefix
    from titanenv.sbatch import job_environment

    names = [name for name, _ in job_environment(config, training=True)]
    return job_exec_prefix(config, names)


def job_python(config: Config) -> str:
    """The Python that job steps run.

    Inside a container, the activated venv's ``python``. Without one: on the
    local machine the interpreter running this task, elsewhere the venv of the
    machine's CPU architecture.
    """
    if config.settings.cluster.container_runtime != "none":
        return "python"
    if config.machine == "local":
        return sys.executable
    return str(config.paths.venv_dir / "bin" / "python")
