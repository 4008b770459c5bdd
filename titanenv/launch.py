"""How a job step runs on a machine: its environment, container prefix, Python and launcher.

The one home of job-step facts. :mod:`titanenv.sbatch` renders scripts from
these and the tasks run them here; nothing in this module imports either.
"""

from __future__ import annotations

import sys

from titanenv.config import Config, HF_OFFLINE_ENVIRONMENT, cache_environment
from titanenv.container.session import uses_container
from titanenv.cudaarch import cuda_arch_list

# Python module of each launcher a machine profile may name (cluster.launcher).
LAUNCHER_MODULES = {
    # PyTorch's own torchrun.
    "torchrun": "torch.distributed.run",
    # torchrun with JSC's fixes for rendezvous host names (JSC's torchrun_jsc,
    # as the original environment launched it there).
    "torchrun_jsc": "torchrun_jsc",
}


# The oldest GPU generation (compute capability) each CUDA major release builds
# for: CUDA 12 from Maxwell, CUDA 13 from Turing (it dropped Volta, the V100).
_OLDEST_GPU = {11: (3, 5), 12: (5, 0), 13: (7, 5)}


def unsupported_gpus(config: Config) -> str | None:
    """Why the machine's GPUs cannot run the container's CUDA, or None when they can (or it is unknown)."""
    cluster = config.settings.cluster
    cuda = config.settings.container.contents.cuda
    if not uses_container(config) or not cuda or not cluster.cuda_compute_capabilities:
        return None
    major = int(cuda.split(".")[0])
    oldest = _OLDEST_GPU.get(major)
    if oldest is None:
        return None
    usable = [cc for cc in cluster.cuda_compute_capabilities
              if tuple(int(part) for part in cc.rstrip("abcdefghijklmnopqrstuvwxyz").split(".")) >= oldest]
    if usable:
        return None
    return (f"the GPUs of {config.machine} (compute capability {', '.join(cluster.cuda_compute_capabilities)}) "
            f"are older than the container's CUDA {cuda} supports ({oldest[0]}.{oldest[1]} and newer)")


def job_environment(config: Config, *, training: bool) -> list[tuple[str, str]]:
    """Variables every job exports: caches into scratch, HF offline, CUDA archs, network."""
    cluster = config.settings.cluster
    env = dict(cache_environment(config.paths.cache_dir))
    env.update(HF_OFFLINE_ENVIRONMENT)
    if cluster.cuda_compute_capabilities:
        env["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list(None, cluster.cuda_compute_capabilities)
    if training:
        env.update(cluster.network.env)
        env["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
    return list(env.items())


def job_launcher(config: Config) -> list[str]:
    """Argument vector that prefixes a command so it runs in the machine's environment.

    In a container: the runtime's exec of the active container, host variables
    that break it removed and the venv of this CPU architecture activated; the
    command's words follow unchanged. With no container (runtime ``none``) the
    command runs as it is; see :func:`job_python` for the interpreter it uses.
    """
    if not uses_container(config):
        return []
    from titanenv.container import job_exec_prefix

    from titanenv.train.stop import STOP_FILE_VARIABLE

    # Docker and Podman get the job's variables by name; the stop marker's
    # path is set by the training script (the one its stop trap writes).
    names = [name for name, _ in job_environment(config, training=True)] + [STOP_FILE_VARIABLE]
    return job_exec_prefix(config, names)


def job_python(config: Config) -> str:
    """The Python that job steps run.

    Inside a container, the activated venv's ``python``. Without one: on a
    machine whose profile says ``cluster.local`` the interpreter running this
    task, elsewhere the venv of the machine's CPU architecture.
    """
    if uses_container(config):
        return "python"
    if config.settings.cluster.local:
        return sys.executable
    return str(config.paths.venv_dir / "bin" / "python")


def stop_guard() -> list[str]:
    """Words before the launcher that let it outlive the stop signals (see titanenv.train.stop).

    Slurm signals every process of a job step, and srun passes on what the
    batch shell forwards: torchrun's agent, which dies of USR1 and answers
    TERM by killing its workers 30 s later, must ignore both. An ignored
    signal stays ignored across exec and fork, so the agent and its workers
    start that way; the workers then handle both (titanenv.train.stop), and
    ``PET_SIGNALS_TO_HANDLE`` (torchrun's ``--signals-to-handle``) keeps the
    agent from installing its own TERM handler. Runs inside the container,
    after the runtime's starter, which resets the signals it handles.
    """
    from titanenv.train.stop import AGENT_SIGNALS_TO_HANDLE, SIGNALS

    names = " ".join(SIGNALS)
    script = f'trap "" {names}; export PET_SIGNALS_TO_HANDLE={AGENT_SIGNALS_TO_HANDLE}; exec "$@"'
    return ["bash", "--noprofile", "--norc", "-c", script, "titanenv-stop-guard"]


def torchrun(config: Config, python: str | None = None) -> list[str]:
    """The machine's distributed launcher (``cluster.launcher``), unbuffered: its options follow."""
    module = LAUNCHER_MODULES[config.settings.cluster.launcher]
    return [python or job_python(config), "-u", "-m", module]
