"""Every question this project asks git about a repository on this machine.

- :class:`GitProbe` / :func:`git_state`: commit, branch and dirty flag of
  the checkout a job is submitted from (run records, provenance), started
  before sbatch so the two overlap, and remembered while nothing changed;
- :func:`head_commit`, :func:`laptop_repo`, :func:`is_ancestor`,
  :func:`make_bundle`, :func:`file_at`: the laptop's checkout that
  ``fab -H HOST`` ships to a login node.

All of them run ``git --no-optional-locks -C <repo>`` (:func:`git_argv`):
a question never takes the index lock or rewrites it.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titanenv.errors import TitanEnvError


class GitError(TitanEnvError):
    """git is missing here, or a question it had to answer failed."""


def git_argv(repo: Path) -> list[str]:
    """The start of every git command line here."""
    return ["git", "--no-optional-locks", "-C", str(repo)]


def _last_line(stderr: str, returncode: int) -> str:
    return (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]


# --- the state of a checkout a job is submitted from ---------------------------------

# Git states already found in this process, reused while nothing git would
# look at has changed (see GitProbe).
_GIT_MEMO: dict[str, tuple[list[str], list[tuple[int, int, int] | None], dict[str, Any]]] = {}
# Files changed this close to a probe may change again within the file
# system's time resolution unnoticed ("racy git"); such a state is not reused.
_RACY_NS = 2_000_000_000


class GitProbe:
    """The commit, branch and dirty flag of a repository, started now and read later.

    Submission starts it before calling sbatch so the two overlap. It never
    raises: a missing git or a directory that is not a repository gives
    ``{"commit": None, "dirty": None, "error": ...}``. Untracked files count as
    dirty: an uncommitted training config changes what a run did as much as
    an edited one.

    Like git's own index, a process remembers the answer together with the
    stat data (mtime, size, inode) of every tracked and untracked file, their
    directories and the repository's HEAD, index and refs; a later probe that
    finds all of these unchanged reuses it instead of running git again, so
    submitting many jobs from one process costs one ``git status``.
    """

    def __init__(self, repo: Path):
        self._repo = Path(repo)
        self._started_ns = time.time_ns()
        self._memo: dict[str, Any] | None = None
        self._error: str | None = None
        self._status: subprocess.Popen[str] | None = None
        self._files: subprocess.Popen[bytes] | None = None
        memo = _GIT_MEMO.get(str(self._repo))
        if memo is not None and _fingerprint(memo[0]) == memo[1]:
            self._memo = memo[2]
            return
        git = git_argv(self._repo)
        try:
            self._status = subprocess.Popen(
                [*git, "status", "--porcelain=v2", "--branch"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            )
            self._files = subprocess.Popen(
                [*git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            self._error = f"git status: {exc}"

    def result(self) -> dict[str, Any]:
        """``{"commit", "branch", "dirty", "changed"}``, or ``{"commit": None, "dirty": None, "error"}``."""
        if self._memo is None:
            self._memo = self._collect()
        return dict(self._memo)

    def _collect(self) -> dict[str, Any]:
        if self._status is None:
            return {"commit": None, "dirty": None, "error": self._error}
        stdout, stderr = self._status.communicate()
        listing = self._files.communicate()[0] if self._files else b""
        if self._status.returncode != 0:
            return {"commit": None, "dirty": None, "error": _last_line(stderr, self._status.returncode)}
        state = _parse_status(stdout)
        if self._files is not None and self._files.returncode == 0:
            self._remember(state, listing)
        return state

    def _remember(self, state: dict[str, Any], listing: bytes) -> None:
        repo = self._repo
        files = [repo / os.fsdecode(name) for name in listing.split(b"\0") if name]
        watched = sorted({str(p) for p in (repo, *files, *(f.parent for f in files), *_git_files(repo))})
        fingerprint = _fingerprint(watched)
        newest = max((entry[0] for entry in fingerprint if entry), default=0)
        if newest < self._started_ns - _RACY_NS:
            _GIT_MEMO[str(repo)] = (watched, fingerprint, state)


def _git_files(repo: Path) -> list[Path]:
    """HEAD, index, packed refs and the current branch's ref file (worktrees included)."""
    dot_git = repo / ".git"
    git_dir = dot_git
    try:
        if dot_git.is_file():
            git_dir = (repo / dot_git.read_text().split("gitdir:", 1)[1].strip()).resolve()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        head = (git_dir / "HEAD").read_text().strip()
    except (OSError, IndexError):
        return [dot_git]
    paths = [dot_git, git_dir / "HEAD", git_dir / "index", common / "packed-refs"]
    if head.startswith("ref: "):
        paths.append(common / head[5:])
    return paths


def _fingerprint(paths: list[str]) -> list[tuple[int, int, int] | None]:
    entries: list[tuple[int, int, int] | None] = []
    stat = os.stat
    for path in paths:
        try:
            st = stat(path)
        except OSError:
            entries.append(None)
        else:
            entries.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return entries


def git_state(repo: Path) -> dict[str, Any]:
    """Commit, branch and dirty flag of ``repo``; see :class:`GitProbe`."""
    return GitProbe(repo).result()


def _parse_status(text: str) -> dict[str, Any]:
    commit = branch = None
    changed = []
    for line in text.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split(" ", 2)[2]
            commit = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            head = line.split(" ", 2)[2]
            branch = None if head == "(detached)" else head
        elif line and not line.startswith("#"):
            changed.append(_status_path(line))
    return {"commit": commit, "branch": branch, "dirty": bool(changed), "changed": changed[:20]}


def _status_path(line: str) -> str:
    """The path of one ``git status --porcelain=v2`` entry."""
    kind = line[0]
    fields = {"1": 8, "2": 9, "u": 10}.get(kind)
    if fields is None:  # "? path" (untracked) or "! path" (ignored)
        return line[2:]
    return line.split(" ", fields)[fields].split("\t")[0]


# --- the laptop's checkout, for remote hosts --------------------------------------


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run([*git_argv(root), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise GitError("git is not installed here; remote tasks need it to know this checkout's commit") from None
    if check and result.returncode != 0:
        raise GitError(f"git {args[0]} in {root} failed: {_last_line(result.stderr, result.returncode)}")
    return result


def head_commit(root: Path) -> str:
    """The commit checked out here; an error outside a git checkout."""
    result = _git(root, "rev-parse", "-q", "--verify", "HEAD", check=False)
    if result.returncode != 0:
        raise GitError(f"{root} is not a git checkout with a commit; remote tasks run the commit checked out here")
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
            [*git_argv(root), "show", f"{commit}:{path}"], capture_output=True, check=True
        ).stdout
    except subprocess.CalledProcessError:
        return b""
