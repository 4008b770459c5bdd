"""The typed shape of the resolved configuration.

Every key the project reads is declared here, once. Models forbid unknown keys
and use strict types, so a typo or a wrong type in any layer is an error that
names the key. Values come from ``invoke.yaml`` (project defaults) and
``machines/*.yaml`` (machine facts); the few defaults below are "nothing"
values (empty lists, no QoS), never facts about a machine.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

CpuArch = Literal["x86_64", "aarch64"]
Runtime = Literal["apptainer", "singularity", "docker", "podman", "none"]
PartitionKind = Literal["debug", "normal", "large"]
Launcher = Literal["torchrun", "torchrun_jsc"]
PARTITION_KINDS: tuple[str, ...] = ("debug", "normal", "large")

# Slurm's accepted time-limit forms (sbatch(1), --time).
_SLURM_TIME = re.compile(
    r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|UNLIMITED|INFINITE)$"
)
_COMPUTE_CAPABILITY = re.compile(r"^\d+\.\d+[a-z]?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def slurm_time_problem(value: str) -> str | None:
    """Why ``value`` is not a Slurm time limit, or None when it is one."""
    if _SLURM_TIME.match(value):
        return None
    return f"{value!r} is not a Slurm time limit; use MM, HH:MM:SS or D-HH:MM:SS (e.g. 00:20:00)"


# slurmctld refuses longer job names, accounts, partitions and QoS names
# (job_mgr.c, _test_strlen: ESLURM_PATHNAME_TOO_LONG).
SLURM_NAME_MAX = 1024
SBATCH_OPTION_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def sbatch_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be the value of an ``#SBATCH`` line, or None.

    sbatch reads a directive up to the end of its line (an open quote there
    is its "Unmatched `'`" error), so a newline cannot be carried at all;
    other control characters would reach Slurm's names verbatim. Everything
    printable can be: the renderer quotes it as sbatch's own parser reads it.
    """
    for char in value:
        if unicodedata.category(char) == "Cc":
            if char in "\n\r":
                return "contains a line break, which would end its #SBATCH line"
            return f"contains the control character {char!r}; an #SBATCH value is printable text"
    return None


def slurm_name_problem(value: str) -> str | None:
    """:func:`sbatch_value_problem`, and Slurm's length limit on names."""
    if len(value) > SLURM_NAME_MAX:
        return f"is {len(value)} characters long; Slurm takes at most {SLURM_NAME_MAX}"
    return sbatch_value_problem(value)


def job_name_problem(value: str) -> str | None:
    """:func:`slurm_name_problem`, and no ``/``: the job's log files are named after it."""
    if "/" in value:
        # Measured: Slurm takes the name, then fails the job (exit 0:53) opening <run>/a/b-<id>.out.
        return "contains '/'; the job's logs are named after it (%x-%j.out), in a directory that would not exist"
    return slurm_name_problem(value)


def _checked(problem_of: Any) -> Any:
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


def _option_name_problem(name: str) -> str | None:
    if SBATCH_OPTION_NAME.match(name):
        return None
    return f"{name!r} is not an sbatch long option name (like cpus-per-task)"


def _scalar_to_str(value: Any) -> Any:
    # Environment values are naturally written as numbers in YAML (NCCL_IB_TIMEOUT: 20).
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


EnvValue = Annotated[StrictStr, BeforeValidator(_scalar_to_str)]
# Values that reach #SBATCH lines.
SbatchValue = Annotated[EnvValue, _checked(sbatch_value_problem)]
SbatchOptionName = Annotated[StrictStr, _checked(_option_name_problem)]
SlurmName = Annotated[StrictStr, _checked(slurm_name_problem)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- machine facts (machines/*.yaml only) ------------------------------------


class PartitionSpec(Model):
    """Where one kind of job goes: a partition, a QoS, or both ("" = omit)."""

    partition: SlurmName = ""
    qos: SlurmName = ""


def _partition_shorthand(value: Any) -> Any:
    # `debug: develbooster` is short for `debug: {partition: develbooster}`.
    return {"partition": value} if isinstance(value, str) else value


PartitionEntry = Annotated[PartitionSpec, BeforeValidator(_partition_shorthand)]


class PartitionSet(Model):
    debug: PartitionEntry
    normal: PartitionEntry
    large: PartitionEntry


class Partitions(Model):
    """GPU partitions (training) and, where the machine has them, CPU-only ones."""

    gpu: PartitionSet
    cpu: PartitionSet | None = None


class Modules(Model):
    """Environment modules loaded before anything runs on the machine."""

    purge: StrictBool = False
    load: list[StrictStr] = []
    try_load: list[StrictStr] = Field(default=[], description="loaded if present (module try-load)")


class Network(Model):
    """Settings of multi-node jobs."""

    master_host_suffix: StrictStr = ""
    master_port: StrictInt = Field(ge=1, le=65535)
    env: dict[StrictStr, EnvValue] = {}

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value


class Cluster(Model):
    description: StrictStr
    project_root: StrictStr
    scratch_root: StrictStr
    project: StrictStr = Field(description="directory name under both roots")
    account: SlurmName = Field(description="Slurm account; empty for none")
    cpu_arch: CpuArch | Literal["auto"]
    cores_per_node: Annotated[StrictInt, Field(ge=1)] | Literal["auto"]
    gpus_per_node: Annotated[StrictInt, Field(ge=0)]
    cuda_compute_capabilities: list[StrictStr]
    partitions: Partitions
    modules: Modules = Modules()
    network: Network
    container_runtime: Runtime
    container_binary: StrictStr
    launcher: Launcher = Field(description="distributed launcher of training jobs: torchrun or torchrun_jsc")
    sbatch_options: dict[SbatchOptionName, SbatchValue] = Field(
        default={}, description="extra #SBATCH options for every job on this machine"
    )

    @field_validator("cuda_compute_capabilities")
    @classmethod
    def _capabilities(cls, value: list[str]) -> list[str]:
        for cc in value:
            if not _COMPUTE_CAPABILITY.match(cc):
                raise ValueError(f"{cc!r} is not a CUDA compute capability like '8.0'")
        return value


# --- project settings (invoke.yaml, overridable per machine and user) --------


class PathTemplates(Model):
    """Derived directories; ``{placeholders}`` name earlier ones and cluster facts."""

    project_dir: StrictStr
    scratch_dir: StrictStr
    repos_dir: StrictStr
    venv_dir: StrictStr
    data_dir: StrictStr
    checkpoint_dir: StrictStr
    runs_dir: StrictStr
    container_dir: StrictStr
    container_build_dir: StrictStr
    offline_dir: StrictStr
    cache_dir: StrictStr


class PatchedFile(Model):
    target: StrictStr = Field(description="absolute path inside the container")
    source: StrictStr = Field(description="patched copy on the host")


class ContainerSettings(Model):
    image: StrictStr
    image_digest: StrictStr = ""
    name: StrictStr
    gpus: StrictBool
    binds: list[StrictStr] = []
    patched_files: list[PatchedFile] = []
    unset_env: list[StrictStr]
    archive_dir: StrictStr = Field(description="offline archives: <stem>.tar (docker save) or <stem>.sif")
    network: StrictStr = Field(description="docker/podman --network")
    ulimits: list[StrictStr] = []
    env: dict[StrictStr, EnvValue] = {}
    pass_env: list[StrictStr] = []
    options: list[StrictStr] = []

    @field_validator("unset_env", "pass_env")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\*?$", name):
                raise ValueError(f"{name!r} is not a variable name (a trailing * matches a prefix)")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value


class SlurmSettings(Model):
    partition: PartitionKind
    nodes: Annotated[StrictInt, Field(ge=1)]
    time: StrictStr
    account: SlurmName = Field(description="empty: the machine's account")
    job_name: Annotated[StrictStr, _checked(job_name_problem)] = ""
    options: dict[SbatchOptionName, SbatchValue] = {}

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        problem = slurm_time_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class DataSettings(Model):
    inputs: list[StrictStr] = Field(min_length=1)
    tokenizer: StrictStr
    output: StrictStr
    text_key: Annotated[StrictStr, Field(min_length=1)] = "text"
    backend: Literal["auto", "gigatoken", "hf"] = "auto"
    eod_token: StrictStr = ""
    chunk_mb: Annotated[StrictInt, Field(ge=0)] = 0
    workers: Annotated[StrictInt, Field(ge=0)] = 0
    strict: StrictBool = False
    progress_interval: Annotated[float, Field(gt=0)] = 30.0
    parallel_tasks_per_node: Annotated[StrictInt, Field(ge=1)] = 1


class TrainSettings(Model):
    config: StrictStr
    # Checkpoints and TorchTitan's outputs: {checkpoint_dir}/<name>; "" = the TOML's file name.
    name: StrictStr = ""
    # Processes per node; 0 = one per GPU (one on machines without GPUs).
    procs_per_node: Annotated[StrictInt, Field(ge=0)] = 0


_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RepoPin(Model):
    """An external repository cloned under ``paths.repos_dir`` and installed from there."""

    name: StrictStr = Field(description="directory under paths.repos_dir")
    uri: StrictStr = Field(description="where to clone from; a fork's URI for forks")
    ref: StrictStr = Field(description="commit, tag or branch to check out")
    upstream: StrictStr = Field(default="", description="forks: the original; a clone whose origin is this gets origin switched")
    extras: list[StrictStr] = []
    install: StrictBool = True
    editable: StrictBool = True
    pip_args: list[StrictStr] = []
    env: dict[StrictStr, EnvValue] = {}
    skip_cuda_archs: list[StrictStr] = Field(default=[], description="compute capabilities left out of TORCH_CUDA_ARCH_LIST")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _REPO_NAME.match(value):
            raise ValueError(f"{value!r} is not a directory name (letters, digits, . _ -)")
        return value


class ProjectInstall(Model):
    """This repository, installed editable into the venv so jobs can run ``python -m titanenv``."""

    install: StrictBool
    extras: list[StrictStr] = []
    pip_args: list[StrictStr] = []


class EnvSettings(Model):
    """The software stack inside the container: venv, pinned repositories, offline bundle."""

    python: StrictStr = Field(description="interpreter the venv is made from, inside the container")
    system_site_packages: StrictBool
    repos: list[RepoPin] = []
    pip_packages: list[StrictStr] = []
    build_packages: list[StrictStr] = []
    project: ProjectInstall
    pip_args: list[StrictStr] = []
    download_args: list[StrictStr] = []
    bundle_dir: StrictStr

    @field_validator("repos")
    @classmethod
    def _unique(cls, value: list[RepoPin]) -> list[RepoPin]:
        names = [repo.name for repo in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two repositories are named {name!r}")
        return value


HostKeyPolicy = Literal["", "strict", "ask", "accept-new"]


class RemoteSettings(Model):
    """Running tasks on a login node over SSH (fab -H)."""

    hosts: dict[StrictStr, StrictStr] = Field(
        description="SSH host alias or HostName pattern (fnmatch) -> machine profile; first match wins"
    )
    checkout: StrictStr = Field(description="where the remote checkout lives; {placeholders} of that machine, ~ = remote home")
    ssh_config: StrictStr = Field(description="OpenSSH client config file; empty: ~/.ssh/config and /etc/ssh/ssh_config")
    connect_timeout: Annotated[StrictInt, Field(ge=1, le=3600)]
    host_key_policy: HostKeyPolicy = Field(
        description="unknown host keys: strict, ask, accept-new; empty: StrictHostKeyChecking of the ssh config (default ask)"
    )
    check_commit: StrictBool = Field(description="refuse to run tasks on a checkout at another commit than this one")
    pty: StrictBool = Field(description="run remote commands on a pseudo-terminal, so Ctrl-C stops them")
    shell_setup: list[StrictStr] = Field(default=[], description="shell lines run before every remote command")
    python: StrictStr = Field(description="interpreter on the host that creates the checkout's venv")
    venv_options: list[StrictStr] = []
    pip_options: list[StrictStr] = []
    extras: list[StrictStr] = Field(default=[], description="extras of this project installed on the host")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern, machine in value.items():
            if not pattern.strip():
                raise ValueError("a host pattern is empty")
            if not re.match(r"^[a-z0-9][a-z0-9_-]*$", machine):
                raise ValueError(f"{machine!r} (for {pattern!r}) is not a machine profile name")
        return value


class Settings(Model):
    machine: StrictStr
    user_config: StrictStr
    user: StrictStr = Field(description="empty: the login name")
    env_name: StrictStr
    cluster: Cluster
    paths: PathTemplates
    container: ContainerSettings
    slurm: SlurmSettings
    env: EnvSettings
    data: DataSettings
    train: TrainSettings
    remote: RemoteSettings
