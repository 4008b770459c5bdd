"""The user's OpenSSH client configuration, as Paramiko reads it plus ``Include``.

Fabric hands ``~/.ssh/config`` (then ``/etc/ssh/ssh_config``) to Paramiko,
which ignores ``Include``: every host defined in an included file would be
unknown. Here included files are spliced in where the directive stands, as
OpenSSH does (relative paths from ``~/.ssh`` for the user file and from
``/etc/ssh`` for the system one; globs expanded in sorted order). An
``Include`` inside a ``Host`` block applies to that block only: if the
included text opens blocks of its own, the enclosing ``Host`` line is
repeated after it so that what follows stays in the enclosing block.

Host and user names are checked as OpenSSH checks them (readconf.c
``ssh_valid_hostname``/``ssh_valid_ruser``, its fix for CVE-2023-51385)
before Paramiko expands ``%h``/``%r`` into a ``ProxyCommand`` or a
``Match exec`` line, both of which reach a shell.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from paramiko.config import SSHConfig

from titanenv.remote.errors import RemoteError

USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
SYSTEM_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
_MAX_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
_KEYWORD = re.compile(r"^\s*(\w+)(?:\s*=\s*|\s+)(.*?)\s*$")
# OpenSSH's sets: shell metacharacters; a host name also takes no `$`, `\` or `,`.
_HOST_REFUSED = frozenset("'`\"$\\;&<>|(){},")
_USER_REFUSED = frozenset("'`\";&<>|(){}")
_SPACE = frozenset(" \t\n\v\f\r")
_WHY = "a ProxyCommand or Match exec line would hand it to a shell"


def _control(char: str) -> bool:
    return ord(char) < 32 or ord(char) == 127


def host_name_problem(name: str) -> str | None:
    """Why OpenSSH would refuse ``name`` as a host name, or None."""
    if not name:
        return "is empty"
    if name.startswith("-"):
        return "starts with '-', which OpenSSH refuses (it would read as an option)"
    bad = next((c for c in name if c in _HOST_REFUSED or c in _SPACE or _control(c)), None)
    if bad is not None:
        return f"contains {bad!r}, which OpenSSH refuses in host names ({_WHY})"
    return None


def user_name_problem(name: str) -> str | None:
    """Why OpenSSH would refuse ``name`` as a remote user name, or None."""
    if not name:
        return "is empty"
    if name.startswith("-"):
        return "starts with '-', which OpenSSH refuses (it would read as an option)"
    for index, char in enumerate(name):
        following = name[index + 1 : index + 2]
        if char in _USER_REFUSED or _control(char):
            return f"contains {char!r}, which OpenSSH refuses in user names ({_WHY})"
        if char in _SPACE and following == "-":
            return "has a '-' after white space, which OpenSSH refuses in user names (it would read as an option)"
        if char == "\\" and not following:
            return "ends in '\\', which OpenSSH refuses in user names"
    return None


def check_host_name(name: str, origin: str) -> str:
    """``name``, or a RemoteError naming it and ``origin`` (``fab -H``, a ProxyJump, ...)."""
    problem = host_name_problem(name)
    if problem:
        raise RemoteError(f"{origin}: host name {name!r} {problem}")
    return name


def check_user_name(name: str, origin: str) -> str:
    problem = user_name_problem(name)
    if problem:
        raise RemoteError(f"{origin}: user name {name!r} {problem}")
    return name


def split_destination(text: str, origin: str) -> tuple[str | None, str, int | None]:
    """``(user, host, port)`` of ``[user@]host[:port]`` as Fabric splits it, each checked first.

    Nothing here looks the host up: this runs before any ``%h`` expansion.
    """
    user, at, hostport = text.rpartition("@")
    if at and not user:
        raise RemoteError(f"{origin}: {text!r} has an empty user name before '@'")
    host, port = hostport, None
    if hostport.count(":") == 1:  # more than one: an IPv6 address, no port (as Fabric reads it)
        host, _, port_text = hostport.partition(":")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise RemoteError(f"{origin}: {text!r} has no port number after ':' (1 to 65535)")
            port = int(port_text)
    check_host_name(host, origin)
    if at:
        check_user_name(user, origin)
    return (user or None), host, port


def config_files(ssh_config: str) -> list[tuple[Path, Path]]:
    """The files to read, each with the directory its relative Includes start from."""
    if ssh_config:
        path = Path(os.path.expanduser(ssh_config))
        if not path.is_file():
            raise RemoteError(f"ssh config file {ssh_config!r} does not exist (remote.ssh_config or fab -S)")
        return [(path, Path(os.path.expanduser("~/.ssh")))]
    return [
        (Path(os.path.expanduser(USER_CONFIG)), Path(os.path.expanduser("~/.ssh"))),
        (Path(SYSTEM_CONFIG), Path("/etc/ssh")),
    ]


def expand_includes(path: Path, base: Path, depth: int = 0) -> list[str]:
    """Lines of ``path`` with every ``Include`` replaced by the files it names."""
    if depth > _MAX_DEPTH:
        raise RemoteError(f"{path}: Include nested more than {_MAX_DEPTH} deep")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RemoteError(f"cannot read ssh config {path}: {exc.strerror}") from None
    out: list[str] = []
    block = None  # the Host/Match line of the block we are in
    for number, line in enumerate(text.splitlines(), 1):
        match = _KEYWORD.match(line)
        keyword = match.group(1).lower() if match else ""
        if keyword in ("host", "match"):
            block = line.strip()
        if keyword != "include":
            out.append(line)
            continue
        included: list[str] = []
        for pattern in _split_words(match.group(2)):
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = str(base / pattern)
            for name in sorted(glob.glob(pattern)):
                if os.path.isfile(name):
                    included += expand_includes(Path(name), base, depth + 1)
        out += included
        opens_blocks = any((m := _KEYWORD.match(l)) and m.group(1).lower() in ("host", "match") for l in included)
        if block is not None and opens_blocks:
            out.append(block)
        elif block is None and opens_blocks:
            out.append("Host *")
    return out


def _split_words(value: str) -> list[str]:
    # Include takes whitespace-separated words, optionally double-quoted.
    return [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', value)]


def load_ssh_config(ssh_config: str = "") -> SSHConfig:
    """Parse the configured file (or the user's and the system's), Includes spliced in."""
    lines: list[str] = []
    for path, base in config_files(ssh_config):
        if path.is_file():
            lines += expand_includes(path, base)
    parsed = SSHConfig()
    try:
        parsed.parse(iter(line + "\n" for line in lines))
    except Exception as exc:  # paramiko's ConfigParseError and friends
        raise RemoteError(f"cannot parse the ssh config: {exc}") from None
    return parsed


def known_hosts_files(host_config: dict) -> tuple[list[Path], list[Path]]:
    """(user files, system files) of known host keys, as ssh_config names them."""
    user = host_config.get("userknownhostsfile")
    system = host_config.get("globalknownhostsfile")
    user_files = _split_words(user) if user else list(USER_KNOWN_HOSTS)
    system_files = _split_words(system) if system else list(SYSTEM_KNOWN_HOSTS)
    expand = lambda names: [Path(os.path.expanduser(n)) for n in names if n.lower() != "none"]  # noqa: E731
    return expand(user_files), expand(system_files)


def host_key_policy(host_config: dict, configured: str) -> str:
    """strict, ask or accept-new: ``configured`` if set, else StrictHostKeyChecking."""
    if configured:
        return configured
    value = str(host_config.get("stricthostkeychecking", "ask")).lower()
    # `no`/`off` would let OpenSSH accept changed keys too; here they only accept new ones.
    return {"yes": "strict", "ask": "ask", "accept-new": "accept-new", "no": "accept-new", "off": "accept-new"}.get(
        value, "ask"
    )
