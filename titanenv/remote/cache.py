"""Resolved hosts, cached so that ``fab -H HOST TASK`` need not load the configuration.

Loading and validating the layered configuration (pydantic) costs about a
quarter of a second, a third of what ``fab`` adds to a task
(bench/fab_overhead.py). What it yields for a host (its machine, checkout
path and remote settings) changes only when something it was computed from
changes: the files read (invoke.yaml, machines/*.yaml, the user file), the
``INVOKE_*`` variables, ``$HOME``, the code that resolves it, or what the ssh
config says the host is. Those are fingerprinted; an entry is used only while
the fingerprint matches, otherwise the configuration is loaded, validated and
the entry replaced. The file lives in ``~/.cache/titanenv/`` (one per
repository) and is written atomically; a damaged one is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from titanenv.remote.target import RemoteOptions, RemoteTarget, resolve_target
from titanenv.files import write_json_atomic

if TYPE_CHECKING:
    from titanenv.config import Config

FORMAT = 1
_PACKAGE = Path(__file__).resolve().parent.parent


def _code() -> list[Path]:
    """The code that may turn configuration into a target: every module of the package.

    Not a hand-kept list (one missed config/paths.py and config/sources.py,
    so edits there left a stale entry); a stat of each module costs about a
    millisecond in all, and an edit elsewhere only costs one reload.
    """
    return sorted(_PACKAGE.rglob("*.py"))


def cache_file(repo_root: Path, environ: Mapping[str, str]) -> Path:
    base = Path(environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME", "~"), ".cache")).expanduser()
    tag = hashlib.sha256(str(repo_root).encode()).hexdigest()[:16]
    return base / "titanenv" / f"remote-hosts-{tag}.json"


def fingerprint(files: list[str], environ: Mapping[str, str]) -> str:
    digest = hashlib.sha256(f"{FORMAT}".encode())
    for name in sorted(k for k in environ if k.startswith("INVOKE_") or k == "HOME"):
        digest.update(f"\0env {name}={environ[name]}".encode())
    for path in [*files, *map(str, _code())]:
        try:
            stat = os.stat(path)
            digest.update(f"\0file {path} {stat.st_mtime_ns} {stat.st_size}".encode())
        except OSError:
            digest.update(f"\0file {path} missing".encode())
    return digest.hexdigest()


class TargetResolver:
    """Targets of hosts, from the cache while it is valid, else from the configuration."""

    def __init__(self, repo_root: Path, environ: Mapping[str, str] | None = None, laptop: "Config | None" = None):
        self.repo_root = repo_root.resolve()
        self.environ = os.environ if environ is None else environ
        self._laptop = laptop
        self.path = cache_file(self.repo_root, self.environ)
        self._entry = self._read()

    def laptop(self) -> "Config":
        """The laptop's configuration, loaded and validated on first use."""
        if self._laptop is None:
            from titanenv.config import load_config

            self._laptop = load_config(self.repo_root, environ=self.environ)
        return self._laptop

    def ssh_config(self) -> str:
        """The ssh config file the laptop's configuration names ("" for OpenSSH's defaults)."""
        if self._entry is not None:
            return self._entry["ssh_config"]
        return self.laptop().settings.remote.ssh_config

    def target(self, host: str, *, hostname: str, login_user: str) -> RemoteTarget:
        key = "\0".join((host, hostname, login_user))
        cached = self._entry["targets"].get(key) if self._entry is not None else None
        if cached is not None:
            return RemoteTarget(
                host=host, machine=cached["machine"], checkout=cached["checkout"],
                settings=RemoteOptions.from_dict(cached["settings"]),
            )
        target = resolve_target(self.repo_root, host, hostname=hostname, login_user=login_user, laptop=self.laptop())
        self._store(key, target)
        return target

    # --- the file ---------------------------------------------------------------

    def _files(self) -> list[str]:
        machines = self.repo_root / "machines"
        user_file = os.path.expanduser(self.laptop().settings.user_config)
        return [
            str(self.repo_root / "invoke.yaml"),
            str(machines),
            *sorted(str(p) for p in machines.glob("*.yaml")),
            user_file,
        ]

    def _read(self) -> dict[str, Any] | None:
        try:
            entry = json.loads(self.path.read_text(encoding="utf-8"))
            if entry["fingerprint"] != fingerprint(entry["files"], self.environ):
                return None
            entry["ssh_config"], entry["targets"]  # noqa: B018 - shape check
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return entry

    def _store(self, key: str, target: RemoteTarget) -> None:
        files = self._files()
        entry = self._entry or {"files": files, "fingerprint": fingerprint(files, self.environ), "targets": {}}
        entry["ssh_config"] = self.laptop().settings.remote.ssh_config
        entry["targets"][key] = {"machine": target.machine, "checkout": target.checkout, "settings": asdict(target.settings)}
        self._entry = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, entry)
        except OSError:
            pass  # a cache that cannot be written only costs time
