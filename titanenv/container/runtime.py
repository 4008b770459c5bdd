"""Container runtimes as argument-vector builders.

Each runtime turns one description of "run this argv in that image" into the
exact command line of its binary; nothing here runs anything. The runtime and
its binary come from the machine profile (``cluster.container_runtime``,
``cluster.container_binary``): :func:`runtime_for` picks the class.

Apptainer and Singularity (its older name, BSC's binary) run image *files*
(``.sif``) and inherit the host environment; Docker and Podman run *named*
images in fresh ``run --rm`` containers and see only what they are given with
``--env`` and ``--volume``. ``none`` runs commands on the host as they are.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Mapping, Protocol, Sequence

from titanenv.errors import ConfigError
from titanenv.names import is_env_name

ImageKind = Literal["file", "named", "none"]
RUNTIME_NAMES: tuple[str, ...] = ("apptainer", "singularity", "docker", "podman", "none")



@dataclass(frozen=True)
class Mount:
    """A host path bound into the container."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ExecSpec:
    """What to run in a container; a runtime turns it into its command line."""

    image: str
    command: Sequence[str]
    gpus: bool = False
    mounts: Sequence[Mount] = ()
    # Set inside the container. Apptainer inherits the host environment, so
    # its runner exports these on the host; Docker and Podman get --env flags.
    env: Mapping[str, str] = field(default_factory=dict)
    # Host variables passed into Docker/Podman containers by name (their value at run time).
    pass_env: Sequence[str] = ()
    workdir: str | None = None
    interactive: bool = False
    tty: bool = False
    network: str = "host"
    # uid, gid of the caller: Docker runs as them; rootless Podman maps them.
    user: tuple[int, int] | None = None
    options: Sequence[str] = ()
    # Docker/Podman --ulimit values (NGC recommends memlock=-1, stack=67108864).
    ulimits: Sequence[str] = ()


class ImageNames(Protocol):
    """Where a runtime's images live (:class:`titanenv.container.images.ImageLayout`)."""

    def file(self, slot: str) -> Path: ...

    def ref(self, slot: str) -> str: ...


class ContainerRuntime(Protocol):
    """What every runtime decides: whether it runs a container at all, what it sees
    of the host, how variables get in, where its images are, and its command lines."""

    name: str
    binary: str
    image_kind: ImageKind
    # Commands run in a container (every runtime but ``none``).
    in_container: bool
    # The container sees the host's files (Apptainer binds home and cwd itself);
    # otherwise this project's directories are bound at the same paths.
    sees_host_files: bool

    def exec_argv(self, spec: ExecSpec) -> list[str]: ...

    def image(self, layout: ImageNames, slot: str) -> str: ...

    def host_environment(self, host: Mapping[str, str], inside: Mapping[str, str]) -> dict[str, str]: ...


def venv_entry(command: Sequence[str], *, unset: Sequence[str], activate: str | None,
               libcuda_dir: str = "") -> list[str]:
    """Wrap ``command`` so it runs with host variables removed and, if given, a venv activated.

    The words of ``command`` are passed as positional parameters and run with
    ``exec "$@"``: they reach the program exactly as given (quotes, spaces,
    ``$``, newlines). ``BASH_ENV`` is removed by ``env`` before bash starts,
    because bash reads that file before running anything; names ending in
    ``*`` (``CMAKE_*``) remove every variable with that prefix. ``libcuda_dir``
    becomes ``TRITON_LIBCUDA_PATH`` when it holds ``libcuda.so`` there.
    """
    for name in unset:
        if not is_env_name(name, prefix_glob=True):
            raise ConfigError(f"{name!r} is not a variable name (a trailing * matches a prefix)", key="container.unset_env")
    patterns = "|".join(unset) or "''"
    parts = [f'for __v in $(compgen -v); do case "$__v" in {patterns}) unset "$__v" 2>/dev/null ;; esac; done; unset __v']
    if libcuda_dir:
        quoted = shlex.quote(libcuda_dir)
        parts.append(f"if [ -e {quoted}/libcuda.so ]; then export TRITON_LIBCUDA_PATH={quoted}; fi")
    if activate is not None:
        parts.append(
            'if [ ! -r "$0" ]; then echo "error: no venv at ${0%/bin/activate} (inside the container); '
            'run: invoke env.setup" >&2; exit 1; fi; source "$0"'
        )
    parts.append('exec "$@"')
    script = "; ".join(parts)
    return ["env", "-u", "BASH_ENV", "bash", "--noprofile", "--norc", "-c", script, activate or "titanenv", *command]


class Apptainer:
    """``apptainer exec`` on ``.sif`` files; ``--nv`` passes the GPUs."""

    name: ClassVar[str] = "apptainer"
    image_kind: ClassVar[ImageKind] = "file"
    in_container: ClassVar[bool] = True
    sees_host_files: ClassVar[bool] = True
    # Apptainer reads variables with this prefix as "set inside the container".
    env_prefix: ClassVar[str] = "APPTAINERENV_"

    def __init__(self, binary: str = "") -> None:
        self.binary = binary or self.name

    def exec_argv(self, spec: ExecSpec) -> list[str]:
        """``exec`` of the image file; the container starts in the caller's directory
        with the caller's environment, so the spec's workdir, env and pass_env have no flag."""
        argv = [self.binary, "exec"]
        if spec.gpus:
            argv.append("--nv")
        for mount in spec.mounts:
            argv += ["--bind", _bind_spec(mount, self.name)]
        argv += list(spec.options)
        return [*argv, spec.image, *spec.command]

    def image(self, layout: ImageNames, slot: str) -> str:
        """An image file (``.sif``)."""
        return str(layout.file(slot))

    def host_environment(self, host: Mapping[str, str], inside: Mapping[str, str]) -> dict[str, str]:
        """The container inherits the host's environment: the variables for inside are set there."""
        return {**host, **inside}

    def pull_argv(self, uri: str, dest: str) -> list[str]:
        """Fetch ``uri`` (e.g. ``docker://nvcr.io/...``) into the image file ``dest``."""
        return [self.binary, "pull", "--force", dest, uri]

    def build_from_archive_argv(self, archive: str, dest: str) -> list[str]:
        """Build ``dest`` from a ``docker save`` archive, without network."""
        return [self.binary, "build", "--force", dest, f"docker-archive://{archive}"]


class Singularity(Apptainer):
    """Apptainer's older name and binary (MareNostrum 5); same command lines."""

    name: ClassVar[str] = "singularity"
    env_prefix: ClassVar[str] = "SINGULARITYENV_"


class Docker:
    """``docker run --rm`` on named images; ``--gpus all`` passes the GPUs."""

    name: ClassVar[str] = "docker"
    image_kind: ClassVar[ImageKind] = "named"
    in_container: ClassVar[bool] = True
    sees_host_files: ClassVar[bool] = False

    def __init__(self, binary: str = "") -> None:
        self.binary = binary or self.name

    def image(self, layout: ImageNames, slot: str) -> str:
        """An image name in the runtime's store."""
        return layout.ref(slot)

    def host_environment(self, host: Mapping[str, str], inside: Mapping[str, str]) -> dict[str, str]:
        """The container sees only the variables given with ``--env`` (the spec's env and pass_env)."""
        return dict(host)

    def gpu_options(self) -> list[str]:
        return ["--gpus", "all"]

    def user_options(self, uid: int, gid: int) -> list[str]:
        # Files written to bound directories belong to the caller, not root.
        return ["--user", f"{uid}:{gid}"]

    def exec_argv(self, spec: ExecSpec) -> list[str]:
        argv = [self.binary, "run", "--rm"]
        if spec.interactive:
            argv.append("--interactive")
        if spec.tty:
            argv.append("--tty")
        argv += ["--network", spec.network, "--ipc", "host"]
        for limit in spec.ulimits:
            argv += ["--ulimit", limit]
        if spec.gpus:
            argv += self.gpu_options()
        if spec.user is not None and spec.user[0] != 0:
            argv += self.user_options(*spec.user)
        if spec.workdir:
            argv += ["--workdir", spec.workdir]
        for mount in spec.mounts:
            argv += ["--volume", _bind_spec(mount, self.name)]
        for name, value in spec.env.items():
            argv += ["--env", f"{name}={value}"]
        for name in spec.pass_env:
            argv += ["--env", name]
        argv += list(spec.options)
        return [*argv, spec.image, *spec.command]

    def image_ref(self, uri: str) -> str:
        """The reference ``pull`` takes: Docker knows registries only, so ``docker://`` goes."""
        return uri.removeprefix("docker://")

    def pull_argv(self, uri: str) -> list[str]:
        # --quiet prints just the pulled image's name (Docker) or ID (Podman).
        return [self.binary, "pull", "--quiet", self.image_ref(uri)]

    def tag_argv(self, source: str, target: str) -> list[str]:
        return [self.binary, "tag", source, target]

    def untag_argv(self, ref: str) -> list[str]:
        # Removes the name only; the image stays while another name refers to it.
        return [self.binary, "rmi", ref]

    def inspect_id_argv(self, ref: str) -> list[str]:
        return [self.binary, "image", "inspect", "--format", "{{.Id}}", ref]

    def load_argv(self, archive: str) -> list[str]:
        return [self.binary, "load", "--input", archive]

    def save_argv(self, ref: str, archive: str) -> list[str]:
        return [self.binary, "save", "--output", archive, ref]


class Podman(Docker):
    """Podman: Docker's command lines, GPUs through CDI, rootless user mapping."""

    name: ClassVar[str] = "podman"

    def gpu_options(self) -> list[str]:
        # The NVIDIA Container Toolkit's CDI device; podman < 5 has no --gpus.
        return ["--device", "nvidia.com/gpu=all"]

    def user_options(self, uid: int, gid: int) -> list[str]:
        # Rootless podman maps the caller to the same uid inside.
        return ["--userns", "keep-id"]

    def image_ref(self, uri: str) -> str:
        # Podman understands transports (docker://, docker-archive:, oci-archive:) itself.
        return uri


class NoRuntime:
    """Runtime ``none``: commands run on the host (laptops, CI)."""

    name: ClassVar[str] = "none"
    image_kind: ClassVar[ImageKind] = "none"
    in_container: ClassVar[bool] = False
    sees_host_files: ClassVar[bool] = True
    binary = ""

    def exec_argv(self, spec: ExecSpec) -> list[str]:
        return list(spec.command)

    def image(self, layout: ImageNames, slot: str) -> str:
        """No image: the name a container would have (what messages show)."""
        return layout.ref(slot)

    def host_environment(self, host: Mapping[str, str], inside: Mapping[str, str]) -> dict[str, str]:
        """The command runs on the host: it gets both."""
        return {**host, **inside}


RUNTIMES: dict[str, type] = {
    "apptainer": Apptainer,
    "singularity": Singularity,
    "docker": Docker,
    "podman": Podman,
    "none": NoRuntime,
}


def runtime_for(name: str, binary: str = "", *, source: str | None = None) -> ContainerRuntime:
    """The runtime class for a ``cluster.container_runtime`` value."""
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise ConfigError(
            f"unknown container runtime {name!r}; use one of: {', '.join(RUNTIME_NAMES)}",
            source=source,
            key="cluster.container_runtime",
        ) from None
    return cls() if cls is NoRuntime else cls(binary)


def _bind_spec(mount: Mount, runtime: str) -> str:
    # Both syntaxes split on ':'; a path holding one cannot be expressed.
    for path in (mount.source, mount.target):
        if ":" in path:
            raise ConfigError(f"{runtime} cannot bind {path!r}: the path contains ':'", key="container.binds")
    spec = f"{mount.source}:{mount.target}"
    return spec + ":ro" if mount.read_only else spec
