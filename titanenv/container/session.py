"""The container of a configured machine: its runtime, images and run command lines.

Everything here turns the resolved configuration into the objects of
``runtime``, ``host`` and ``images``; tasks and job scripts call these.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from titanenv.config import HF_OFFLINE_ENVIRONMENT, Config, cache_environment, container_stem
from titanenv.cudaarch import cuda_arch_list
from titanenv.container.host import HostShell
from titanenv.container.images import FileImages, ImageLayout, NamedImages
from titanenv.container.runtime import ContainerRuntime, ExecSpec, Mount, runtime_for, venv_entry
from titanenv.errors import ConfigError, TitanEnvError


class NoVenv(TitanEnvError):
    """The venv commands run in has not been set up."""


@dataclass(frozen=True)
class Invocation:
    """A command line and the environment it runs with (without the module prelude)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def runtime(config: Config) -> ContainerRuntime:
    cluster = config.settings.cluster
    return runtime_for(cluster.container_runtime, cluster.container_binary,
                       source=config.origin("cluster.container_runtime"))


def uses_container(config: Config) -> bool:
    """Whether the machine runs jobs in a container (every runtime but ``none``); checks the name."""
    return runtime(config).in_container


def host_shell(config: Config) -> HostShell:
    cluster = config.settings.cluster
    rt = runtime(config)
    return HostShell(
        machine=config.machine,
        runtime=rt.name,
        binary=rt.binary,
        purge=cluster.modules.purge,
        load=tuple(cluster.modules.load),
        try_load=tuple(cluster.modules.try_load),
        modules_source=config.origin("cluster.modules.load") if cluster.modules.load else config.origin("cluster.modules"),
        binary_source=config.origin("cluster.container_binary"),
    )


def layout(config: Config) -> ImageLayout:
    container = config.settings.container
    return ImageLayout(
        stem=container_stem(container.name, container.image, config.arch),
        container_dir=config.paths.container_dir,
        build_dir=config.paths.container_build_dir,
        archive_dir=config.expand_path(container.archive_dir, "container.archive_dir"),
    )


def build_environment(config: Config, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of runtime commands on the host: caches (Apptainer's too) under scratch."""
    env = dict(os.environ if base is None else base)
    env.update(cache_environment(config.paths.cache_dir))
    return env


def images(config: Config, echo=print) -> FileImages | NamedImages:
    """The build/active/previous containers of the configured machine."""
    rt = runtime(config)
    if not rt.in_container:
        raise ConfigError(
            "runtime 'none' runs in a host venv and has no container to build or activate; "
            "choose apptainer, singularity, docker or podman",
            source=config.origin("cluster.container_runtime"),
            key="cluster.container_runtime",
        )
    store = FileImages if rt.image_kind == "file" else NamedImages
    container = config.settings.container
    return store(rt, host_shell(config), layout(config), build_environment(config),
                 image=container.image, expected_digest=container.image_digest, echo=echo)


def active_image(config: Config) -> str:
    """The container in use: an image file (Apptainer) or an image name (Docker/Podman)."""
    return runtime(config).image(layout(config), "active")


def container_environment(config: Config) -> dict[str, str]:
    """Variables set inside the container: caches, HuggingFace offline, CUDA archs, extras."""
    env = cache_environment(config.paths.cache_dir)
    env.update(HF_OFFLINE_ENVIRONMENT)
    capabilities = config.settings.cluster.cuda_compute_capabilities
    if capabilities:
        env["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list(None, capabilities)
    env.update(config.settings.container.env)
    return env


def _parse_bind(text: str, index: int) -> Mount:
    parts = text.split(":")
    if not parts[0] or len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ConfigError(f"{text!r} is not host[:container[:ro|rw]]", key=f"container.binds[{index}]")
    source = os.path.expanduser(parts[0])
    target = parts[1] if len(parts) > 1 and parts[1] else source
    return Mount(source, target, read_only=len(parts) == 3 and parts[2] == "ro")


def mounts(config: Config, *, patched: bool = True) -> list[Mount]:
    """Bind mounts of every run: project directories (Docker/Podman), patched files, extras."""
    result: list[Mount] = []
    if not runtime(config).sees_host_files:
        # Docker and Podman see nothing of the host unless bound: give them what
        # the original bound (home, this repository, project and scratch), at the same paths.
        seen: set[str] = set()
        for path in (Path.home(), config.repo_root, config.paths.project_dir, config.paths.scratch_dir):
            text = str(path)
            if text not in seen and path.is_dir():
                seen.add(text)
                result.append(Mount(text, text))
    if patched:
        for index, item in enumerate(config.settings.container.patched_files):
            key = f"container.patched_files[{index}].source"
            source = config.expand_path(item.source, key)
            if not source.is_file():
                raise ConfigError(f"patched file {str(source)!r} does not exist", source=config.origin("container.patched_files"), key=key)
            if not item.target.startswith("/"):
                raise ConfigError(f"target {item.target!r} is not an absolute path inside the container",
                                  source=config.origin("container.patched_files"), key=f"container.patched_files[{index}].target")
            result.append(Mount(str(source), item.target, read_only=True))
    for index, text in enumerate(config.settings.container.binds):
        result.append(_parse_bind(config.expand(text, f"container.binds[{index}]"), index))
    return result


def _cleaned_host_env(base: Mapping[str, str], unset: Sequence[str]) -> dict[str, str]:
    exact = {n for n in unset if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in unset if n.endswith("*"))
    return {k: v for k, v in base.items() if k not in exact and not (prefixes and k.startswith(prefixes))}


def _workdir(config: Config, mounted: Sequence[Mount], cwd: str) -> str:
    for mount in mounted:
        if cwd == mount.target or cwd.startswith(mount.target.rstrip("/") + "/"):
            return cwd
    return str(config.repo_root)


def run_invocation(
    config: Config,
    command: Sequence[str],
    *,
    interactive: bool = False,
    tty: bool = False,
    venv: bool = True,
    patched: bool = True,
    hf_offline: bool = True,
    base_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Invocation:
    """The command line that runs ``command`` in the active container, argv exact.

    ``venv``: activate the venv of this CPU architecture first (off only for
    env.setup, which creates it). ``patched``: bind the patched files.
    """
    rt = runtime(config)
    container = config.settings.container
    base = dict(os.environ if base_env is None else base_env)
    activate = str(config.paths.venv_dir / "bin" / "activate") if venv else None
    inner = venv_entry(command, unset=container.unset_env, activate=activate, libcuda_dir=container.triton_libcuda_path)
    inside = container_environment(config)
    if not hf_offline:
        for name in HF_OFFLINE_ENVIRONMENT:
            inside.pop(name, None)
    inside.update(extra_env or {})
    host_env = _cleaned_host_env(base, container.unset_env)
    # What reaches the command, and how, is the runtime's to say (host_environment, exec_argv).
    env = rt.host_environment(build_environment(config, host_env), inside)
    if not rt.in_container:
        return Invocation(inner, env)
    mounted = mounts(config, patched=patched)
    spec = ExecSpec(
        image=active_image(config), command=inner, gpus=container.gpus, mounts=mounted, env=inside,
        workdir=_workdir(config, mounted, cwd or os.getcwd()), interactive=interactive, tty=tty,
        network=container.network, user=(os.getuid(), os.getgid()), options=container.options,
        ulimits=container.ulimits,
    )
    return Invocation(rt.exec_argv(spec), env)


def job_exec_prefix(config: Config, job_env_names: Sequence[str] = ()) -> list[str]:
    """Argv prefix of job steps: the active container, venv activated; the command follows.

    The job script has already loaded the machine's modules and exported the
    job's variables; Docker/Podman get those by name (``job_env_names`` and
    ``container.pass_env``), Apptainer inherits them.
    """
    rt = runtime(config)
    container = config.settings.container
    inner = venv_entry([], unset=container.unset_env, activate=str(config.paths.venv_dir / "bin" / "activate"),
                       libcuda_dir=container.triton_libcuda_path)
    if not rt.in_container:
        return []
    mounted = mounts(config)
    names = list(dict.fromkeys([*job_env_names, *container_environment(config), *container.pass_env]))
    spec = ExecSpec(
        image=active_image(config), command=inner, gpus=container.gpus, mounts=mounted, pass_env=names,
        workdir=str(config.repo_root), network=container.network, user=(os.getuid(), os.getgid()),
        options=container.options, ulimits=container.ulimits,
    )
    return rt.exec_argv(spec)


def run(config: Config, command: Sequence[str], *, interactive: bool = False) -> int:
    """Run ``command`` (an interactive shell if empty) in the active container; its exit status."""
    import subprocess

    if not command:
        command = ["bash", "-i"]
        interactive = True
    venv = config.paths.venv_dir
    if not (venv / "bin" / "activate").is_file():
        raise NoVenv(f"no venv at {venv}; run `invoke env.setup` first")
    rt = runtime(config)
    if rt.in_container:
        store = images(config)
        if not store.slot_state("active").present:
            raise TitanEnvError(
                f"no active container ({active_image(config)}); run `invoke container.build` and `invoke container.activate`"
            )
    invocation = run_invocation(config, command, interactive=interactive, tty=interactive and sys.stdin.isatty())
    shell = host_shell(config)
    if rt.in_container:
        shell.check(invocation.env)
        argv = shell.wrap(invocation.argv)
    else:
        argv = invocation.argv
    return subprocess.run(argv, env=invocation.env).returncode
