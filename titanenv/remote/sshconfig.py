"""The user's OpenSSH client configuration, as Paramiko reads it plus ``Include``.

Fabric hands ``~/.ssh/config`` (then ``/etc/ssh/ssh_config``) to Paramiko,
which ignores ``Include``: every host defined in an included file would be
unknown. Here included files are spliced in where the directive stands, as
OpenSSH does (relative paths from ``~/.ssh`` for the user file and from
``/etc/ssh`` for the system one; globs expanded in sorted order). An
``Include`` inside a ``Host`` block applies to that block only: if the
included text opens blocks of its own, the enclosing ``Host`` line is
repeated after it so that what follows stays in the enclosing block.
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
