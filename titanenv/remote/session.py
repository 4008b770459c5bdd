"""One host as the laptop talks to it: connection, target, and the commands run there."""

from __future__ import annotations

import getpass
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fabric import Config as FabricConfig

from titanenv.remote import scripts
from titanenv.remote.cache import TargetResolver
from titanenv.remote.connection import ProjectConnection, fabric_config
from titanenv.remote.errors import RemoteError
from titanenv.remote.sshconfig import check_host_name, check_user_name, split_destination
from titanenv.remote.target import RemoteTarget

# Exit status when the remote command died without one (killed by a signal, connection lost).
SIGNALLED = 130


class RemoteSession:
    """A host, the checkout there, and an SSH connection opened on first use (then reused)."""

    def __init__(
        self,
        repo_root: Path,
        host: str,
        *,
        fab_config: FabricConfig | None = None,
        resolver: TargetResolver | None = None,
        host_key_policy: str | None = None,
        origin: str = "fab -H",
    ):
        """``origin`` says where ``host`` came from, for messages (``fab -H``, ``--host``)."""
        # Before the ssh config is consulted: its lookup expands %h, also into `Match exec`.
        given_user, alias, _ = split_destination(host, origin)
        resolver = resolver or TargetResolver(repo_root)
        self.repo_root = repo_root
        self.host = host
        config = fabric_config(resolver.ssh_config(), base=fab_config)
        looked_up = config.base_ssh_config.lookup(alias)
        hostname = check_host_name(looked_up.get("hostname", alias), f"HostName of {alias!r} in the ssh config")
        if given_user is None and "user" in looked_up:
            check_user_name(looked_up["user"], f"User of {alias!r} in the ssh config")
        user = given_user or looked_up.get("user", getpass.getuser())
        self.target: RemoteTarget = resolver.target(host, hostname=hostname, login_user=user)
        settings = self.target.settings
        self.connection = ProjectConnection(
            host,
            config=config,
            host_key_policy=host_key_policy or settings.host_key_policy,
            timeout=settings.connect_timeout,
            origin=origin,
        )

    def close(self) -> None:
        """Close the connection and those to its jump hosts (Fabric leaves those open)."""
        cxn: Any = self.connection
        while isinstance(cxn, ProjectConnection):
            cxn.close()
            cxn = cxn.gateway

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, script: str, *, pty: bool = False, hide: bool = False) -> Any:
        """Run a script; output streams here as it comes; returns Fabric's result."""
        return self.connection.run(script, pty=pty, hide=hide, warn=True, in_stream=None if _stdin_is_tty() else False)

    def exit_status(self, result: Any) -> int:
        return SIGNALLED if result.exited is None or result.exited < 0 else result.exited

    def run_tasks(self, argv: list[str], commit: str | None) -> int:
        """``invoke ARGV`` in the checkout (after its checks); the remote exit status."""
        pty = self.target.settings.pty
        result = self.run(scripts.task_script(self.target, commit, argv, pty=pty), pty=pty)
        return self.exit_status(result)

    def run_command(self, command: str, *, in_checkout: bool = False) -> int:
        """A shell command there (in the checkout, or the home directory); its exit status."""
        pty = self.target.settings.pty
        script = scripts.command_script(self.target, command, pty=pty, in_checkout=in_checkout)
        return self.exit_status(self.run(script, pty=pty))

    def upload(self, data: bytes, path: str) -> None:
        """Write ``data`` to ``path`` there (parents created), through the exec channel.

        No SFTP: some sites switch that subsystem off.
        """
        script = scripts.upload_script(self.target, path)
        channel = self.connection.create_session()
        try:
            channel.exec_command(script)
            channel.sendall(data)
            channel.shutdown_write()
            stderr = channel.makefile_stderr("rb").read().decode(errors="replace")
            status = channel.recv_exit_status()
        finally:
            channel.close()
        if status != 0:
            last = (stderr.strip().splitlines() or [f"exit status {status}"])[-1]
            raise RemoteError(f"cannot write {path} on {self.host}: {last}")

    def probe(self, *, branch: str = "", commit: str = "") -> scripts.Probe:
        """The state of the checkout there (one round trip, output hidden)."""
        result = self.run(scripts.probe_script(self.target, branch, commit), hide=True)
        if result.exited != 0:
            last = (result.stderr.strip().splitlines() or [f"exit status {result.exited}"])[-1]
            raise RemoteError(f"cannot inspect {self.target.checkout} on {self.host}: {last}")
        return scripts.parse_probe(result.stdout)


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False


@contextmanager
def session_for(
    c: Any, host: str | None, repo_root: Path, *, accept_new_host_key: bool = False
) -> Iterator[RemoteSession]:
    """The session of a laptop-side task: the one ``fab -H`` opened, or a new one for ``host``."""
    session = getattr(c, "titanenv_session", None)
    if session is not None:
        if host and host != session.host:
            raise RemoteError(f"--host {host} contradicts fab -H {session.host}: give the host once")
        if accept_new_host_key:
            session.connection.accept_new_host_keys()
        yield session
        return
    if not host:
        raise RemoteError("which host? give --host HOST, or run the task as `fab -H HOST ...`")
    policy = "accept-new" if accept_new_host_key else None
    with RemoteSession(repo_root, host, host_key_policy=policy, origin="--host") as session:
        yield session
