"""Which machine a host is, and where this repository's checkout lives there.

Resolved on the laptop from the layered configuration: ``remote.hosts`` maps
the SSH alias (or the HostName it stands for) to a machine profile; that
profile's facts and the SSH login name fill the ``remote.checkout``
template. ``~`` is kept for the remote shell to expand: the laptop's home
means nothing there.
"""

from __future__ import annotations

import fnmatch
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Mapping

from titanenv.errors import ConfigError
from titanenv.remote.errors import RemoteError

if TYPE_CHECKING:  # the configuration package loads pydantic; only resolving needs it
    from titanenv.config import Config


@dataclass(frozen=True)
class RemoteOptions:
    """The validated ``remote`` settings of one machine, as plain data (cacheable)."""

    hosts: dict[str, str]
    checkout: str
    ssh_config: str
    connect_timeout: int
    host_key_policy: str
    check_commit: bool
    pty: bool
    shell_setup: tuple[str, ...]
    python: str
    venv_options: tuple[str, ...]
    pip_options: tuple[str, ...]
    extras: tuple[str, ...]

    @classmethod
    def from_config(cls, config: "Config") -> "RemoteOptions":
        return cls.from_dict(config.settings.remote.model_dump())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RemoteOptions":
        values = {f.name: data[f.name] for f in fields(cls)}
        for name, value in values.items():
            if isinstance(value, list):
                values[name] = tuple(value)
        return cls(**values)

    def with_changes(self, **changes: Any) -> "RemoteOptions":
        return type(self).from_dict({**asdict(self), **changes})


@dataclass(frozen=True)
class RemoteTarget:
    """A host as the tasks see it: its machine profile, checkout and remote settings."""

    host: str
    machine: str
    checkout: str
    settings: RemoteOptions


def machine_for_host(hosts: Mapping[str, str], names: list[str], known: list[str]) -> str | None:
    """The profile of the first of ``names`` (alias, then HostName) that ``hosts`` maps.

    An exact entry wins over patterns; patterns are tried in order; a host
    named exactly like a profile is that profile.
    """
    for name in names:
        if name in hosts:
            return hosts[name]
    for name in names:
        for pattern, machine in hosts.items():
            if fnmatch.fnmatchcase(name, pattern):
                return machine
    for name in names:
        if name in known:
            return name
    return None


def resolve_target(
    repo_root: Path, host: str, *, hostname: str, login_user: str, laptop: "Config | None" = None
) -> RemoteTarget:
    """The target for ``host`` (as given to -H); ``hostname``/``login_user`` from the ssh config."""
    from titanenv.config import known_machines, load_config

    laptop = laptop or load_config(repo_root)
    known = known_machines(repo_root)
    alias = host_alias(host)
    names = [alias] if hostname == alias else [alias, hostname]
    machine = machine_for_host(laptop.settings.remote.hosts, names, known)
    if machine is None:
        if hostname == alias and not _resolves(alias):
            raise RemoteError(f"unknown host {alias!r}: neither a Host alias in your ssh config nor a name DNS resolves")
        raise RemoteError(
            f"no machine profile for host {alias!r}: map it in your user config "
            f"(~/.config/titanenv/config.yaml), e.g. `remote: {{hosts: {{{alias}: jwb}}}}`; profiles: {', '.join(known)}"
        )
    if machine not in known:
        raise ConfigError(
            f"host {alias!r} maps to {machine!r}, which is no machine profile (known: {', '.join(known)})",
            source=laptop.origin("remote.hosts"),
            key="remote.hosts",
        )
    config = laptop if machine == laptop.machine else load_config(repo_root, flags={"machine": machine})
    return RemoteTarget(
        host=host, machine=machine, checkout=remote_checkout(config, login_user), settings=RemoteOptions.from_config(config)
    )


def host_alias(host: str) -> str:
    """``alias`` of ``user@alias:port``."""
    return host.rpartition("@")[2].partition(":")[0]


def _resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def remote_placeholders(config: "Config", login_user: str) -> dict[str, str]:
    """Placeholder values as the remote host sees them (``~`` unexpanded)."""
    from titanenv.config.loader import placeholder_table
    from titanenv.config.paths import PATH_NAMES, expand_template

    settings = config.settings
    arch = None if settings.cluster.cpu_arch == "auto" else settings.cluster.cpu_arch
    values = placeholder_table(
        settings, repo=None, home="~", user=settings.user or login_user, arch=arch, expand_roots=False
    )
    templates = settings.paths.model_dump()
    for name in PATH_NAMES:
        try:
            values[name] = expand_template(templates[name], values, key=f"paths.{name}", source=None)
        except ConfigError:
            continue  # e.g. {arch} on a machine that detects it; only an error if the checkout needs it
    return values


def remote_checkout(config: "Config", login_user: str) -> str:
    """``remote.checkout`` expanded for the host: absolute, or ``~/...``."""
    from titanenv.config.paths import expand_template

    template = config.settings.remote.checkout
    path = expand_template(
        template, remote_placeholders(config, login_user), key="remote.checkout", source=config.origin("remote.checkout")
    )
    path = path.rstrip("/") or "/"
    if not (path == "~" or path.startswith("~/") or PurePosixPath(path).is_absolute()):
        raise ConfigError(
            f"expands to {path!r} on {config.machine}; it must be absolute or start with ~/",
            source=config.origin("remote.checkout"),
            key="remote.checkout",
        )
    if "\n" in path or "\x00" in path:
        raise ConfigError("contains a newline or NUL", source=config.origin("remote.checkout"), key="remote.checkout")
    return path
