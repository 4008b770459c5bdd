"""Facts about this repository on the laptop, and bundles of its commits."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from titanenv.remote.errors import RemoteError


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise RemoteError("git is not installed here; remote tasks need it to know this checkout's commit") from None
    if check and result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise RemoteError(f"git {args[0]} in {root} failed: {last}")
    return result


def head_commit(root: Path) -> str:
    """The commit checked out here; an error outside a git checkout."""
    result = _git(root, "rev-parse", "-q", "--verify", "HEAD", check=False)
    if result.returncode != 0:
        raise RemoteError(f"{root} is not a git checkout with a commit; remote tasks run the commit checked out here")
    return result.stdout.strip()


def has_local_changes(root: Path) -> bool:
    """Whether tracked files differ from HEAD (those changes never reach a host)."""
    return bool(_git(root, "status", "--porcelain", "--untracked-files=no", check=False).stdout.strip())


@dataclass(frozen=True)
class LaptopRepo:
    root: Path
    commit: str
    branch: str  # "" when HEAD is detached
    origin_url: str  # "" without an origin remote
    dirty: bool  # tracked files changed (those changes stay here)


def laptop_repo(root: Path) -> LaptopRepo:
    commit = head_commit(root)
    branch = _git(root, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip()
    origin = _git(root, "remote", "get-url", "origin", check=False).stdout.strip()
    dirty = has_local_changes(root)
    return LaptopRepo(root=root, commit=commit, branch=branch, origin_url=origin, dirty=dirty)


def knows_commit(root: Path, commit: str) -> bool:
    return _git(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0


def is_ancestor(root: Path, older: str, newer: str) -> bool:
    """Whether ``older`` is ``newer`` or one of its ancestors (False if unknown here)."""
    if not knows_commit(root, older):
        return False
    return _git(root, "merge-base", "--is-ancestor", older, newer, check=False).returncode == 0


def make_bundle(root: Path, out: Path, *, since: str | None) -> None:
    """A bundle of HEAD's history (only what follows ``since`` when given)."""
    revs = [f"^{since}", "HEAD"] if since else ["HEAD"]
    _git(root, "bundle", "create", "-q", str(out), *revs)


def file_at(root: Path, commit: str, path: str) -> bytes:
    try:
        return subprocess.run(
            ["git", "-C", str(root), "show", f"{commit}:{path}"], capture_output=True, check=True
        ).stdout
    except subprocess.CalledProcessError:
        return b""
