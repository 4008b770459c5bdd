"""The laptop side of the remote tests: its ssh config and titanenv config, and `fab`.

The "login node" is this machine as seen through the test suite's sshd
(tests/fixtures/sshd.py); its checkout is a real clone made once per session
by `fab -H titan-login remote.bootstrap`, in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.sshd import SshServer, write_laptop_config
from tests.helpers import REPO_ROOT

# Each fab call is Python plus an SSH round trip; a bootstrap also installs a venv.
FAB_TIMEOUT = 120


def run_fab(*args: str, home: Path, env: dict[str, str] | None = None, timeout: float = FAB_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`fab ARGS` from the repository, as a user on the laptop would run it (no stdin)."""
    full_env = {**os.environ, "HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Non-empty lines of everything printed (a pty merges the remote stderr into stdout)."""
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@dataclass(frozen=True)
class Laptop:
    home: Path
    server: SshServer
    checkout: Path

    def fab(self, *args: str, env: dict[str, str] | None = None, timeout: float = FAB_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return run_fab(*args, home=self.home, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def remote_checkout(sshd: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout on the "login node", bootstrapped for real once per session."""
    home = tmp_path_factory.mktemp("laptop-home")
    checkout = sshd.root / "project" / "titanenv"
    write_laptop_config(home, sshd, checkout)
    result = run_fab("-H", "titan-login", "remote.bootstrap", home=home, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return checkout


@pytest.fixture
def laptop(isolated_home: Path, sshd: SshServer, remote_checkout: Path) -> Laptop:
    write_laptop_config(isolated_home, sshd, remote_checkout)
    return Laptop(home=isolated_home, server=sshd, checkout=remote_checkout)
