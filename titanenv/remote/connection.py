"""A Fabric connection that checks host keys like OpenSSH and fails in one line.

Fabric 3.2.3 (measured) adds every unknown host key silently and never reads
``known_hosts``, so it would talk to a host whose key changed. Here every
connection, and every jump host on its way, loads the system and user
``known_hosts`` files named by the ssh config (``GlobalKnownHostsFile``,
``UserKnownHostsFile``), refuses a changed key always and an unknown key
unless the policy accepts it (``strict``, ``ask`` on a terminal,
``accept-new``), and appends an accepted key to the user's file as OpenSSH
does (hashed when ``HashKnownHosts yes``).

Beyond host keys it fixes what bit users of plain Fabric: ``ProxyJump a,b``
goes through a, then b (Fabric reverses the chain); a jump host with the
target's own HostName is no longer dropped;
``IdentitiesOnly yes`` stops the agent from offering its keys; the connect
timeout bounds the banner, authentication and the jump channel too (Paramiko
would wait up to an hour for the latter); and every failure is a
:class:`ConnectError` naming the host and what to do.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import paramiko
from fabric import Config as FabricConfig
from fabric import Connection
from fabric.runners import Remote
from paramiko.hostkeys import HostKeyEntry, HostKeys
from paramiko.proxy import ProxyCommand

from titanenv.remote.errors import ConnectError, HostKeyError
from titanenv.remote.sshconfig import host_key_policy as policy_from_ssh_config
from titanenv.remote.sshconfig import check_host_name, check_user_name, known_hosts_files, load_ssh_config
from titanenv.remote.sshconfig import split_destination

# Paramiko logs transport failures at ERROR; without a handler Python prints
# them ("Exception (client): ...") beside our own one-line error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

ACCEPT_NEW_HINT = "INVOKE_REMOTE_HOST_KEY_POLICY=accept-new (remote.bootstrap: --accept-new-host-key)"


def fabric_config(ssh_config: str = "", *, base: FabricConfig | None = None) -> FabricConfig:
    """A Fabric config whose ssh config has its Includes spliced in.

    ``base`` is the config of a running ``fab`` (its -i and -t flags are kept);
    its -S file, when given, wins over ``ssh_config``.
    """
    runtime = getattr(base, "_runtime_ssh_path", None) if base is not None else None
    parsed = load_ssh_config(runtime or ssh_config)
    if base is None:
        config = FabricConfig(ssh_config=parsed, lazy=True)
    else:
        config = base.clone()
        config.base_ssh_config = parsed
    config.runners.remote = InterruptibleRemote
    return config


class InterruptibleRemote(Remote):
    """Fabric's remote runner; a second Ctrl-C closes the channel (the remote side gets SIGHUP).

    With a pty the first Ctrl-C reaches the remote command as SIGINT, which
    ends nearly everything; one that ignores it is hung up on.
    """

    interrupts = 0

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        self.interrupts += 1
        if self.interrupts > 1 and hasattr(self, "channel"):
            self.channel.close()
            return
        super().send_interrupt(interrupt)


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """What to do with a key that no known_hosts file lists for the host."""

    def __init__(self, connection: "ProjectConnection"):
        self.connection = connection

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        cxn = self.connection
        where = ", ".join(_home_relative(p) for p in [*cxn.user_known_hosts, *cxn.system_known_hosts]) or "none"
        described = f"{key.get_name()} key {key.fingerprint}"
        policy = cxn.host_key_policy
        if policy == "ask" and _interactive():
            answer = _prompt(
                f"The authenticity of host {cxn.label} can't be established.\n"
                f"{described}.\nThis key is not known by any other names.\n"
                "Are you sure you want to continue connecting (yes/no)? "
            )
            policy = "accept-new" if answer.strip().lower() in ("y", "yes") else "strict"
        if policy != "accept-new":
            raise HostKeyError(
                f"{cxn.label}: unknown host key ({described}; not in {where}): check the fingerprint "
                f"and run `ssh {cxn.original_host}` once to record it, or accept it on first use with {ACCEPT_NEW_HINT}"
            )
        self.record(client, hostname, key)

    def record(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        cxn = self.connection
        if not cxn.user_known_hosts:
            raise HostKeyError(f"{cxn.label}: UserKnownHostsFile is none, nowhere to record the new host key")
        path = cxn.user_known_hosts[0]
        name = HostKeys.hash_host(hostname) if cxn.hash_known_hosts else hostname
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            needs_newline = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
            with path.open("a", encoding="utf-8") as handle:
                handle.write(("\n" if needs_newline else "") + line)
        except OSError as exc:
            raise HostKeyError(f"cannot record the host key of {cxn.label} in {path}: {exc.strerror}") from None
        client.get_host_keys().add(hostname, key.get_name(), key)
        print(f"Permanently added {hostname!r} ({key.get_name()}) to {_home_relative(path)}.", file=sys.stderr)


class ProjectConnection(Connection):
    """``fabric.Connection`` with OpenSSH-like host key checks and one-line errors."""

    # Class attributes: invoke's DataProxy would store unknown attributes in the config.
    host_key_policy = "ask"
    user_known_hosts: list[Path] = []
    system_known_hosts: list[Path] = []
    hash_known_hosts = False
    configured_policy = ""
    default_timeout = 15

    def __init__(
        self, host: str, *, host_key_policy: str = "", timeout: int = 15, origin: str = "host", **kwargs: Any
    ):
        """``origin`` names where ``host`` came from in messages (``fab -H``, a ProxyJump)."""
        # Fabric's __init__ looks the host up in the ssh config, which expands %h
        # (into `Match exec` lines too): OpenSSH's checks come first.
        given_user, alias, _ = split_destination(host, origin)
        # get_gateway (called by Fabric's __init__) builds the jump hosts from these.
        self._set(configured_policy=host_key_policy, default_timeout=timeout)
        super().__init__(host, **kwargs)
        # What the ssh config made of it reaches a ProxyCommand's %h and %r.
        if self.host != alias:
            check_host_name(self.host, f"HostName of {alias!r} in the ssh config")
        if given_user is None and "user" in self.ssh_config:
            check_user_name(self.ssh_config["user"], f"User of {alias!r} in the ssh config")
        # Fabric may hand us its config's own dict; hops must not share our changes.
        self.connect_kwargs = dict(self.connect_kwargs)
        given = self.connect_kwargs.pop("timeout", None)  # fab -t
        if given:
            self.connect_timeout = int(given)
        elif self.connect_timeout is None:  # no ConnectTimeout in the ssh config
            self.connect_timeout = timeout
        user_files, system_files = known_hosts_files(self.ssh_config)
        self._set(
            user_known_hosts=user_files,
            system_known_hosts=system_files,
            hash_known_hosts=str(self.ssh_config.get("hashknownhosts", "no")).lower() == "yes",
            host_key_policy=policy_from_ssh_config(self.ssh_config, host_key_policy),
        )
        self.client.set_missing_host_key_policy(KnownHostsPolicy(self))
        known = self.client.get_host_keys()
        for path in [*user_files, *system_files]:
            load_known_hosts(known, path)
        if str(self.ssh_config.get("identitiesonly", "no")).lower() == "yes":
            self.connect_kwargs.setdefault("allow_agent", False)
            self.connect_kwargs.setdefault("look_for_keys", False)
        for name in ("banner_timeout", "auth_timeout"):
            self.connect_kwargs.setdefault(name, self.connect_timeout)

    @property
    def label(self) -> str:
        """``alias (user@hostname:port)`` for messages."""
        target = f"{self.user}@{self.host}:{self.port}"
        return target if self.original_host == self.host else f"{self.original_host} ({target})"

    def accept_new_host_keys(self) -> None:
        """Record unknown host keys (of this host and its jump hosts) on first use."""
        cxn: Any = self
        while isinstance(cxn, ProjectConnection):
            cxn._set(host_key_policy="accept-new")
            cxn = cxn.gateway

    def get_gateway(self) -> Any:
        """The jump hosts of ``ProxyJump a,b`` as OpenSSH takes them: a first, then b through a.

        Fabric 3.2.3 builds the chain backwards (b first, a through b), and
        drops the jump when a hop's name equals our HostName; here only a hop
        naming this very alias is dropped (a wildcard Host block would
        otherwise make the jump host jump through itself).
        """
        jump = self.ssh_config.get("proxyjump")
        if not jump:
            return super().get_gateway()
        if jump.lower() == "none":
            return self.ssh_config.get("proxycommand") or self.config.gateway
        previous = None
        origin = f"ProxyJump of {self.original_host!r} in the ssh config"
        for hop in (h.strip() for h in jump.split(",")):
            if split_destination(hop, origin)[1] == self.original_host:
                return None
            kwargs: dict[str, Any] = {"config": self.config.clone(), "host_key_policy": self.configured_policy}
            if previous is not None:
                kwargs["gateway"] = previous
            previous = type(self)(hop, timeout=self.default_timeout, origin=origin, **kwargs)
        return previous

    def open_gateway(self) -> Any:
        if isinstance(self.gateway, str) and self.gateway == self.ssh_config.get("proxycommand"):
            # Paramiko already expanded its tokens; Fabric would parse it again as
            # the ProxyCommand of a `Host <hostname>` block, and fail (KeyError) on
            # a hostname that is no Host pattern of itself.
            try:
                return ProxyCommand(self.gateway)
            except ValueError as exc:  # shlex: unbalanced quotes
                raise ConnectError(f"{self.label}: cannot parse its ProxyCommand ({exc}): {self.gateway}") from None
        if not isinstance(self.gateway, Connection):
            return super().open_gateway()
        self.gateway.open()
        try:
            return self.gateway.transport.open_channel(
                kind="direct-tcpip",
                dest_addr=(self.host, int(self.port)),
                src_addr=("", 0),
                timeout=self.connect_timeout,
            )
        except paramiko.ChannelException as exc:
            raise ConnectError(
                f"{self.label}: jump host {self.gateway.original_host} cannot reach {self.host}:{self.port} ({exc.text})"
            ) from None
        except (paramiko.SSHException, socket.timeout, EOFError) as exc:
            raise ConnectError(
                f"{self.label}: no answer through jump host {self.gateway.original_host} "
                f"within {self.connect_timeout} s ({exc or type(exc).__name__})"
            ) from None

    def open(self) -> Any:
        if self.is_connected:
            return None
        started = time.monotonic()
        try:
            return super().open()
        except ConnectError:
            raise
        except paramiko.BadHostKeyException as exc:
            known = next((p for p in self.user_known_hosts + self.system_known_hosts if p.is_file()), None)
            name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
            raise HostKeyError(
                f"{self.label}: HOST KEY CHANGED: it offers {exc.key.get_name()} {exc.key.fingerprint}, "
                f"{_home_relative(known) if known else 'known_hosts'} has {exc.expected_key.fingerprint}; someone may be "
                f"intercepting the connection. If the host was reinstalled, check the new fingerprint, then remove "
                f"the old key with `ssh-keygen -R '{name}'`"
            ) from None
        except paramiko.AuthenticationException as exc:
            keys = self.connect_kwargs.get("key_filename") or []
            tried = ", ".join(_home_relative(Path(k)) for k in ([keys] if isinstance(keys, str) else keys))
            agent = "" if self.connect_kwargs.get("allow_agent") is False else " and the ssh agent's"
            what = f"keys {tried}{agent}" if tried else f"default keys{agent}"
            raise ConnectError(
                f"{self.label}: authentication refused ({exc}) with {what}: check User and IdentityFile "
                f"for {self.original_host} in your ssh config, or add the key with ssh-add"
            ) from None
        except socket.gaierror:
            raise ConnectError(
                f"unknown host {self.original_host!r}: neither a Host alias in your ssh config nor a name DNS resolves"
            ) from None
        except (socket.timeout, TimeoutError):
            raise ConnectError(
                f"{self.label}: no answer within {self.connect_timeout} s (remote.connect_timeout or ConnectTimeout)"
            ) from None
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            reason = next(iter(exc.errors.values()), exc)
            raise ConnectError(f"{self.label}: cannot connect: {getattr(reason, 'strerror', None) or reason}") from None
        except paramiko.SSHException as exc:
            # A silent server shows as a banner timeout, or (racing it) as the
            # session missing when authentication starts.
            if time.monotonic() - started >= 0.9 * self.connect_timeout:
                raise ConnectError(
                    f"{self.label}: no SSH answer within {self.connect_timeout} s "
                    "(remote.connect_timeout or ConnectTimeout)"
                ) from None
            if "banner" in str(exc).lower() or "no existing session" in str(exc).lower():
                raise ConnectError(f"{self.label}: the server closed the connection before SSH started") from None
            raise ConnectError(f"{self.label}: SSH failed: {exc}") from None
        except OSError as exc:
            raise ConnectError(f"{self.label}: cannot connect: {exc.strerror or exc}") from None


def load_known_hosts(keys: HostKeys, path: Path) -> None:
    """Add the entries of one known_hosts file; markers and bad lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        # @cert-authority / @revoked: Paramiko has no notion of either.
        if not line or line.startswith(("#", "@")):
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
        except Exception:  # unknown key types, bad base64
            continue
        if entry is not None:
            keys._entries.append(entry)


def _home_relative(path: Path) -> str:
    home = os.path.expanduser("~")
    text = str(path)
    return "~" + text[len(home):] if text.startswith(home + os.sep) else text


def _interactive() -> bool:
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _prompt(question: str, reader: Callable[[], str] = lambda: sys.stdin.readline()) -> str:
    sys.stderr.write(question)
    sys.stderr.flush()
    return reader()
