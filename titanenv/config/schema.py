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

from titanenv.names import is_env_name

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


def slurm_time_problem(value: str) -> str | None:
    """Why ``value`` is not a Slurm time limit, or None when it is one."""
    if _SLURM_TIME.match(value):
        return None
    return f"{value!r} is not a Slurm time limit; use MM, HH:MM:SS or D-HH:MM:SS (e.g. 00:20:00)"


def slurm_time_seconds(value: str) -> int | None:
    """A valid Slurm time limit in seconds; None for UNLIMITED/INFINITE.

    Slurm's reading (sbatch(1)): a lone number is minutes, ``A:B`` minutes and
    seconds, ``A:B:C`` hours, minutes and seconds; after ``D-``, ``H``,
    ``H:M`` or ``H:M:S``.
    """
    if value in ("UNLIMITED", "INFINITE"):
        return None
    days, dash, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if dash:
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, minutes, seconds = 0, parts[0], parts[1] if len(parts) > 1 else 0
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


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


def _env_name_problem(name: str) -> str | None:
    return None if is_env_name(name) else f"{name!r} is not an environment variable name"


def _env_pattern_problem(name: str) -> str | None:
    if is_env_name(name, prefix_glob=True):
        return None
    return f"{name!r} is not a variable name (a trailing * matches a prefix)"


EnvName = Annotated[StrictStr, _checked(_env_name_problem)]
# unset_env, pass_env: a name, or NAME* for every variable it begins.
EnvNamePattern = Annotated[StrictStr, _checked(_env_pattern_problem)]
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
    # 0: a free port of the first node, chosen when the job starts (nodes shared
    # between jobs; needs the host's Python, so runtime none only).
    master_port: StrictInt = Field(ge=0, le=65535)
    env: dict[EnvName, EnvValue] = {}


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
    local: StrictBool = Field(
        default=False,
        description="the machine the tasks run on (a laptop or workstation): data.* and research.* run jobs here "
        "unless --submit, and jobs without a container use the Python running the task",
    )
    launcher: Launcher = Field(description="distributed launcher of training jobs: torchrun or torchrun_jsc")
    stop_signal_lead: Annotated[StrictInt, Field(ge=0, le=65535)] = Field(
        description="seconds before a training job's time limit at which Slurm asks it to save a checkpoint and "
        "stop (sbatch --signal=B:USR1@N); 0: never"
    )
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


_TORCH_VERSION = re.compile(r"^\d+\.\d+(\.\d+)*([a-z]+\d*)?(\+[A-Za-z0-9.]+)?$")


def _version_problem(value: str) -> str | None:
    if value and not _TORCH_VERSION.match(value):
        return f"{value!r} is not a version like 2.13.0 or 2.13.0a0+9186a08b2c.nv26.7.59513937"
    return None


def _release_problem(like: str):
    """The problem of an ``X.Y`` release (empty: not known), for :func:`_checked`."""
    def problem(value: str) -> str | None:
        if value and not re.fullmatch(r"\d+\.\d+", value):
            return f"{value!r} is not {like}"
        return None

    return problem


class ImageContents(Model):
    """What the pinned image holds: facts of the image, changed together with ``container.image``."""

    torch: Annotated[StrictStr, _checked(_version_problem)] = Field(
        default="", description="torch's distribution version in the image (pip show torch)")
    python: Annotated[StrictStr, _checked(_release_problem("a version like 3.12"))] = Field(
        default="", description="X.Y of the image's Python")
    glibc: Annotated[StrictStr, _checked(_release_problem("a version like 3.12"))] = Field(
        default="", description="X.Y of the image's C library (manylinux wheels it accepts)")
    cuda: Annotated[StrictStr, _checked(_release_problem("a CUDA release like '13.3'"))] = Field(
        default="", description="X.Y of the image's CUDA (which GPU generations it can drive)")


class ContainerSettings(Model):
    image: StrictStr
    image_digest: StrictStr = ""
    contents: ImageContents = ImageContents()
    name: StrictStr
    gpus: StrictBool
    binds: list[StrictStr] = []
    patched_files: list[PatchedFile] = []
    unset_env: list[EnvNamePattern]
    archive_dir: StrictStr = Field(description="offline archives: <stem>.tar (docker save) or <stem>.sif")
    network: StrictStr = Field(description="docker/podman --network")
    ulimits: list[StrictStr] = []
    env: dict[EnvName, EnvValue] = {}
    pass_env: list[EnvNamePattern] = []
    options: list[StrictStr] = []
    triton_libcuda_path: StrictStr = Field(
        default="", description="set as TRITON_LIBCUDA_PATH inside the container when it holds libcuda.so; empty: never"
    )


class SlurmSettings(Model):
    partition: PartitionKind
    nodes: Annotated[StrictInt, Field(ge=1)]
    time: Annotated[StrictStr, _checked(slurm_time_problem)]
    account: SlurmName = Field(description="empty: the machine's account")
    job_name: Annotated[StrictStr, _checked(job_name_problem)] = ""
    options: dict[SbatchOptionName, SbatchValue] = {}


class DataSettings(Model):
    inputs: list[StrictStr] = Field(min_length=1)
    tokenizer: StrictStr
    output: StrictStr
    # The held-out part: its JSONL inputs and the dataset they make
    # ({data_valid_output} in a training TOML's [data] valid_datasets).
    valid_inputs: list[StrictStr] = []
    valid_output: StrictStr
    text_key: Annotated[StrictStr, Field(min_length=1)] = "text"
    backend: Literal["auto", "gigatoken", "hf"] = "auto"
    eod_token: StrictStr = ""
    chunk_mb: Annotated[StrictInt, Field(ge=0)] = 0
    workers: Annotated[StrictInt, Field(ge=0)] = 0
    strict: StrictBool = False
    # A run that skips a larger share of its lines or rows (blank lines aside) fails and
    # writes no output: a wrong text_key or a file of another format loses a large share,
    # a sound corpus next to nothing (titanenv.data.preprocess.MAX_SKIPPED_FRACTION).
    max_skipped_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01
    progress_interval: Annotated[float, Field(gt=0)] = 30.0
    parallel_tasks_per_node: Annotated[StrictInt, Field(ge=1)] = 1


def _option_name(value: str) -> str:
    if value and not re.match(r"^--[A-Za-z_][A-Za-z0-9_.-]*$", value):
        raise ValueError(f"{value!r} is not a command-line option (--section.key)")
    return value


OptionName = Annotated[StrictStr, BeforeValidator(_option_name)]


class TorchTitanCheckout(Model):
    """Which TorchTitan runs a training job: ours (titanenv's loader and recipes), or a checkout's own entry point."""

    # "" = ours: python -m titanenv.train on TorchTitan 0.3.x. A directory (a clone
    # such as {repos_dir}/torchtitan, an unpacked release) = its own entry point runs.
    checkout: StrictStr = ""
    # The entry point, relative to the checkout; torchrun runs it as a script.
    entry: StrictStr = "torchtitan/train.py"
    # The option naming the TOML file; "" = the TOML's keys become options instead.
    toml_option: OptionName = "--job.config_file"
    # The option naming the output folder (checkpoints under it).
    dump_folder_option: Annotated[OptionName, Field(min_length=3)] = "--job.dump_folder"
    # Options added where the job has no GPU.
    cpu_options: list[StrictStr] = []

    @field_validator("entry")
    @classmethod
    def _entry(cls, value: str) -> str:
        if not value or value.startswith(("/", "~")) or ".." in value.split("/"):
            raise ValueError(f"{value!r}: expected a path inside the checkout, e.g. torchtitan/train.py")
        return value


class TrainRecipes(Model):
    """The recipe ``train.config: auto`` picks, by whether the machine has GPUs."""

    cpu: StrictStr = Field(description="on machines with cluster.gpus_per_node 0")
    gpu: StrictStr = Field(description="on machines with GPUs")


class TrainSettings(Model):
    # A TOML path, or "auto": auto_config.cpu or auto_config.gpu by cluster.gpus_per_node.
    config: Annotated[StrictStr, Field(min_length=1)]
    auto_config: TrainRecipes
    torchtitan: TorchTitanCheckout = TorchTitanCheckout()
    # Checkpoints and TorchTitan's outputs: {checkpoint_dir}/<name>; "" = the TOML's file name.
    name: StrictStr = ""
    # Processes per node; 0 = one per GPU (one on machines without GPUs).
    procs_per_node: Annotated[StrictInt, Field(ge=0)] = 0


class ResearchSettings(Model):
    """research.export / research.sample / research.report defaults."""

    # Export dtype: float32, bfloat16 or float16; "" = the recipe's training.mixed_precision_param.
    dtype: Literal["", "float32", "bfloat16", "float16"] = ""
    prompt: StrictStr = ""
    max_new_tokens: Annotated[StrictInt, Field(ge=1)] = 40
    # 0 = greedy decoding.
    temperature: Annotated[float, Field(ge=0)] = 0.0
    seed: StrictInt = 0
    device: StrictStr = "cpu"


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
    env: dict[EnvName, EnvValue] = {}
    skip_cuda_archs: list[StrictStr] = Field(default=[], description="compute capabilities left out of TORCH_CUDA_ARCH_LIST")
    release: StrictStr = Field(
        default="", description="the PyPI release made from this ref (torchtitan==0.3.0): its metadata stands for the clone's"
    )

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


class HubSettings(Model):
    """env.hub-download: what to fetch from the HuggingFace Hub into the scratch caches, and how."""

    models: list[StrictStr] = Field(default=[], description="ID[@REVISION]")
    tokenizers: list[StrictStr] = Field(default=[], description="ID[@REVISION]: only tokenizer_files")
    datasets: list[StrictStr] = Field(
        default=[], description="ID[@REVISION][:CONFIG[:SPLIT]], or a local path (/, ./ = this repository's, ~)"
    )
    metrics: list[StrictStr] = Field(default=[], description="evaluate metric NAME[@REVISION]")
    trust_remote_code: StrictBool = Field(
        default=False, description="download a model's or tokenizer's *.py and allow community metrics"
    )
    model_ignore: list[StrictStr] = Field(default=[], description="globs a model download leaves out")
    tokenizer_files: list[StrictStr] = Field(default=[], description="globs a tokenizer download takes")

    @field_validator("models", "tokenizers", "datasets", "metrics")
    @classmethod
    def _names(cls, value: list[str], info: Any) -> list[str]:
        # Standard library only: the same check the download step repeats in the container.
        from titanenv.envsetup.hubfetch import parse

        kind = info.field_name.removesuffix("s")
        for text in value:
            parse(kind, text, base="/")
        return value


class EnvSettings(Model):
    """The software stack inside the container: venv, pinned repositories, offline bundle."""

    python: StrictStr = Field(description="interpreter the venv is made from, inside the container")
    system_site_packages: StrictBool
    torch: StrictStr = Field(
        description="the torch the venv runs: 'container' (container.contents.torch, reused) or a version pip may install"
    )
    container_constraints: StrictBool = Field(
        description="whether the container's own pip constraint file (its PIP_CONSTRAINT) applies to set-up's installs"
    )
    repos: list[RepoPin] = []
    pip_packages: list[StrictStr] = []
    build_packages: list[StrictStr] = []
    project: ProjectInstall
    pip_args: list[StrictStr] = []
    download_args: list[StrictStr] = []
    bundle_dir: StrictStr
    hub: HubSettings = HubSettings()

    @field_validator("torch")
    @classmethod
    def _torch(cls, value: str) -> str:
        problem = None if value == "container" else _version_problem(value) if value else "empty"
        if problem:
            raise ValueError(f"expected 'container' or a torch version like 2.13.0 (got {value!r})")
        return value

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
    research: ResearchSettings
    remote: RemoteSettings
