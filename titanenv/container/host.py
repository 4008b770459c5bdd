"""Running a runtime's binary on this machine: site modules first, then the command.

On JSC and BSC the runtime comes from environment modules (``module purge;
module load Stages/2025 GCC; module try-load Apptainer-Tools``). Every runtime
command therefore runs behind a short bash prelude that loads the machine's
modules, and a binary that is still missing afterwards is one line naming the
machine, its modules and the profile that lists them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from typing import Mapping, Sequence

from titanenv.errors import CommandError, TitanEnvError

# Exit status and stderr marker of the prelude when the binary is missing.
_MISSING_STATUS = 127
_MISSING_MARKER = "titanenv: runtime binary not found"
# Where Lmod and Environment Modules define the `module` function for
# non-interactive shells that did not inherit it.
_MODULE_INIT_FILES = ("/etc/profile.d/lmod.sh", "/etc/profile.d/modules.sh", "/usr/share/lmod/lmod/init/bash")


class RuntimeNotFound(TitanEnvError):
    """The container runtime's binary is not available on this machine."""


class DiskFull(TitanEnvError):
    """A build or download ran out of space."""


# Hints for machines without modules: where each runtime comes from.
_INSTALL_HINTS = {
    "apptainer": "install Apptainer (https://apptainer.org/docs/admin/main/installation.html)",
    "singularity": "install SingularityCE or Apptainer",
    "docker": "install Docker (Debian/Ubuntu: apt install docker.io) and start its daemon",
    "podman": "install Podman (Debian/Ubuntu: apt install podman)",
}


@dataclass(frozen=True)
class HostShell:
    """How commands run on this machine: its modules, then the runtime binary."""

    machine: str
    runtime: str
    binary: str
    purge: bool = False
    load: Sequence[str] = ()
    try_load: Sequence[str] = ()
    # Where the modules (or the binary) are configured, for messages.
    modules_source: str = ""
    binary_source: str = ""

    @property
    def has_modules(self) -> bool:
        return bool(self.purge or self.load or self.try_load)

    def module_commands(self) -> list[str]:
        """The module lines the prelude runs, as a user would type them."""
        lines = ["module purge"] if self.purge else []
        if self.load:
            lines.append("module load " + " ".join(shlex.quote(m) for m in self.load))
        lines += [f"module try-load {shlex.quote(m)}" for m in self.try_load]
        return lines

    def prelude(self) -> str:
        """Bash that loads the machine's modules and checks the runtime binary."""
        init = " ".join(shlex.quote(f) for f in _MODULE_INIT_FILES)
        lines = []
        if self.has_modules:
            lines += [
                "if ! type module >/dev/null 2>&1; then",
                f"    for f in {init}; do if [ -r \"$f\" ]; then . \"$f\"; break; fi; done",
                "fi",
                "if type module >/dev/null 2>&1; then",
            ]
            if self.purge:
                lines.append("    module purge")
            if self.load:
                lines.append("    module load " + " ".join(shlex.quote(m) for m in self.load) + " || exit 1")
            lines += [f"    module try-load {shlex.quote(m)} >/dev/null 2>&1 || true" for m in self.try_load]
            lines.append("fi")
        lines += [
            f"if ! command -v {shlex.quote(self.binary)} >/dev/null 2>&1; then",
            f"    echo {shlex.quote(_MISSING_MARKER)} >&2",
            f"    exit {_MISSING_STATUS}",
            "fi",
        ]
        return "\n".join(lines)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` behind the module prelude; without modules, ``argv`` itself."""
        if not self.has_modules:
            return list(argv)
        return ["bash", "--noprofile", "--norc", "-c", self.prelude() + '\nexec "$@"', "titanenv", *argv]

    def missing_message(self) -> str:
        where = f" ({self.binary_source})" if self.binary_source else ""
        if self.has_modules:
            modules = "; ".join(self.module_commands())
            return (
                f"container runtime {self.runtime!r}: binary {self.binary!r}{where} not found on {self.machine} "
                f"after `{modules}` ({self.modules_source}); load the module that provides it "
                f"(e.g. `module spider {self.runtime}`) or set cluster.container_binary"
            )
        hint = _INSTALL_HINTS.get(self.runtime, f"install {self.runtime}")
        return (
            f"container runtime {self.runtime!r}: binary {self.binary!r}{where} not found on PATH on {self.machine}; "
            f"{hint}, or choose another runtime with cluster.container_runtime (none runs in a host venv)"
        )

    def check(self, env: Mapping[str, str] | None = None) -> None:
        """Raise :class:`RuntimeNotFound` unless the binary is there (after the modules)."""
        if not self.has_modules:
            path = (env or os.environ).get("PATH")
            if shutil.which(self.binary, path=path) is None:
                raise RuntimeNotFound(self.missing_message())
            return
        probe = subprocess.run(
            self.wrap(["true"]), env=dict(env or os.environ), capture_output=True, text=True
        )
        if probe.returncode == _MISSING_STATUS and _MISSING_MARKER in probe.stderr:
            raise RuntimeNotFound(self.missing_message())
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
            raise RuntimeNotFound(f"loading the modules of {self.machine} failed ({self.modules_source}): {last}")

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        capture: bool = False,
        hint: str = "",
    ) -> str:
        """Run ``argv`` behind the prelude; raise :class:`CommandError` on failure.

        Output goes to the terminal unless ``capture``; stderr is also kept so a
        failure (and a full disk) can be reported in one line.
        """
        full = self.wrap(argv)
        proc = subprocess.Popen(
            full,
            env=dict(env) if env is not None else None,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        tail: deque[str] = deque(maxlen=40)
        assert proc.stderr is not None
        out = ""
        if capture:
            out, err = proc.communicate()
            tail.extend(err.splitlines())
        else:
            for line in proc.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))
            proc.wait()
        if proc.returncode == _MISSING_STATUS and any(_MISSING_MARKER in line for line in tail):
            raise RuntimeNotFound(self.missing_message())
        if proc.returncode != 0:
            stderr = "\n".join(line for line in tail if line.strip())
            if "no space left on device" in stderr.lower():
                raise DiskFull(f"{argv[0]} {argv[1] if len(argv) > 1 else ''}: no space left on device")
            raise CommandError(list(argv), proc.returncode, stderr, hint)
        return out or ""
