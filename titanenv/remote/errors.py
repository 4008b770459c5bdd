"""Errors of remote use; each is one line that says what to do."""

from __future__ import annotations

from titanenv.errors import TitanEnvError


class RemoteError(TitanEnvError):
    """Something about the host, the SSH connection or the remote checkout is wrong."""


class ConnectError(RemoteError):
    """The host could not be reached, refused us, or did not answer in time."""


class HostKeyError(ConnectError):
    """The host's key is unknown (and not accepted) or differs from the recorded one."""
