"""Pinned external repositories: clone, switch forks, update; never move a clone silently.

- A missing clone is made (from its URI, or offline from the bundle) in a
  temporary directory, checked out at its pin and only then renamed into place.
- An existing clone keeps its checkout: set-up reports when it is not at the
  pin; only ``--update`` moves it (fetch, stash local changes, check out the
  pin, pop the stash, stopping with a clear message on conflicts).
- A fork: when a clone's ``origin`` still points at ``upstream``, the fork
  becomes ``origin`` and the old one is kept as ``prev-origin``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from titanenv.config.schema import RepoPin
from titanenv.errors import TitanEnvError
from titanenv.files import replacing


class RepoError(TitanEnvError):
    """A pinned repository cannot be cloned, found at its pin, or updated."""


@dataclass(frozen=True)
class RepoState:
    name: str
    path: str
    uri: str
    ref: str
    commit: str
    at_pin: bool
    dirty: bool
    action: str


# Offline fetches take the clone's remote branches and tags from a bundle.
BUNDLE_REFSPECS = ("+refs/remotes/origin/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*",
                   "+HEAD:refs/titanenv/bundle-head")


def git(repo: Path | None, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["git", *(["-C", str(repo)] if repo else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RepoError(f"`git {' '.join(args)}` in {repo} failed: {last}")
    return done


def _offline_env() -> dict[str, str]:
    # Only local files: a URI that slipped through cannot reach the network.
    return {**os.environ, "GIT_ALLOW_PROTOCOL": "file", "GIT_TERMINAL_PROMPT": "0"}


def _online_env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0"}


def resolve(repo: Path, ref: str) -> tuple[str, bool]:
    """``(commit, is_branch)`` of a pin after fetching; RepoError if it does not exist."""
    branch = git(repo, "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{ref}^{{commit}}", check=False)
    if branch.returncode == 0:
        return branch.stdout.strip(), True
    found = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if found.returncode == 0:
        return found.stdout.strip(), False
    raise KeyError(ref)


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD", check=False).stdout.strip()


def is_dirty(repo: Path) -> bool:
    return bool(git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip())


def _missing_pin(pin: RepoPin, source: str) -> RepoError:
    return RepoError(
        f"env.repos[{pin.name}].ref {pin.ref!r} does not exist in {source} (no such branch, tag or commit); fix the pin"
    )


def _fetch(repo: Path, pin: RepoPin, bundle: Path | None) -> None:
    if bundle is not None:
        git(repo, "fetch", "--quiet", str(bundle), *BUNDLE_REFSPECS, env=_offline_env())
    else:
        git(repo, "fetch", "--quiet", "--tags", "origin", env=_online_env())


def _checkout(repo: Path, pin: RepoPin, commit: str, is_branch: bool) -> None:
    if is_branch:
        exists = git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{pin.ref}", check=False).returncode == 0
        if exists:
            git(repo, "checkout", "--quiet", pin.ref)
            merged = git(repo, "merge", "--ff-only", "--quiet", f"origin/{pin.ref}", check=False)
            if merged.returncode != 0:
                raise RepoError(
                    f"{pin.name}: local branch {pin.ref} has commits that origin/{pin.ref} lacks in {repo}; "
                    "merge or rebase them yourself, then run env.setup --update again"
                )
        else:
            git(repo, "checkout", "--quiet", "-b", pin.ref, "--track", f"origin/{pin.ref}")
    else:
        git(repo, "checkout", "--quiet", "--detach", commit)


def _submodules(repo: Path, offline: bool) -> None:
    if (repo / ".gitmodules").is_file() and not offline:
        git(repo, "submodule", "update", "--init", "--recursive", "--quiet", env=_online_env())


def clone(pin: RepoPin, dest: Path, *, bundle: Path | None = None) -> RepoState:
    """Make a clone at ``dest``, checked out at the pin; nothing appears there on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    source = str(bundle) if bundle else pin.uri
    try:
        git(None, "init", "--quiet", str(tmp))
        git(tmp, "remote", "add", "origin", pin.uri)
        _fetch(tmp, pin, bundle)
        try:
            commit, is_branch = resolve(tmp, pin.ref)
        except KeyError:
            raise _missing_pin(pin, source) from None
        _checkout(tmp, pin, commit, is_branch)
        _submodules(tmp, bundle is not None)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RepoState(pin.name, str(dest), pin.uri, pin.ref, commit, True, False, f"cloned from {source}")


def switch_fork(pin: RepoPin, repo: Path, say: Callable[[str], None]) -> bool:
    """Point ``origin`` at the fork when it still points upstream; keep the old one as ``prev-origin``."""
    origin = git(repo, "remote", "get-url", "origin", check=False).stdout.strip()
    if origin == pin.uri:
        return False
    if pin.upstream and origin == pin.upstream:
        if git(repo, "remote", "get-url", "prev-origin", check=False).returncode == 0:
            raise RepoError(f"{pin.name}: {repo} already has a remote prev-origin; remove or rename it, then run env.setup again")
        git(repo, "remote", "rename", "origin", "prev-origin")
        git(repo, "remote", "add", "origin", pin.uri)
        say(f"{pin.name}: origin is now the fork {pin.uri}; the old origin {origin} is kept as prev-origin")
        return True
    say(f"{pin.name}: {repo} has origin {origin or '(none)'}, not {pin.uri}; left as it is")
    return False


def sync(pin: RepoPin, repos_dir: Path, *, update: bool = False, bundle: Path | None = None,
         say: Callable[[str], None] = print) -> RepoState:
    """Bring one pinned repository into place; see the module docstring for the rules."""
    dest = repos_dir / pin.name
    if not dest.exists():
        state = clone(pin, dest, bundle=bundle)
        say(f"{pin.name}: cloned at {pin.ref} ({state.commit[:12]}) into {dest}")
        return state
    if git(dest, "rev-parse", "--git-dir", check=False).returncode != 0:
        raise RepoError(f"{dest} exists but is not a git clone; move it away or rename env.repos[{pin.name}].name")
    switched = switch_fork(pin, dest, say)
    if not update:
        try:
            commit, _ = resolve(dest, pin.ref)
        except KeyError:
            commit = ""
        current = head(dest)
        at_pin = bool(commit) and current == commit
        if not at_pin:
            say(f"{pin.name}: {dest} is at {current[:12]}, not the pin {pin.ref}; left as it is "
                "(env.setup --update moves it)")
        return RepoState(pin.name, str(dest), pin.uri, pin.ref, current, at_pin, is_dirty(dest),
                         "origin switched" if switched else "kept")
    return update_clone(pin, dest, bundle=bundle, say=say)


def update_clone(pin: RepoPin, repo: Path, *, bundle: Path | None = None, say: Callable[[str], None] = print) -> RepoState:
    """Fetch, stash local changes, check out the pin, pop the stash; stop clearly on conflicts."""
    _fetch(repo, pin, bundle)
    try:
        commit, is_branch = resolve(repo, pin.ref)
    except KeyError:
        raise _missing_pin(pin, str(bundle) if bundle else pin.uri) from None
    stashed = False
    if is_dirty(repo):
        message = f"titanenv env.setup --update {time.strftime('%Y-%m-%d %H:%M:%S')}"
        git(repo, "stash", "push", "--quiet", "-m", message)
        stashed = True
        say(f"{pin.name}: stashed local changes ({message})")
    try:
        _checkout(repo, pin, commit, is_branch)
    except RepoError:
        if stashed:
            git(repo, "stash", "pop", "--quiet", check=False)
        raise
    _submodules(repo, bundle is not None)
    if stashed:
        popped = git(repo, "stash", "pop", "--quiet", check=False)
        if popped.returncode != 0:
            raise RepoError(
                f"{pin.name}: your local changes conflict with {pin.ref} in {repo}; resolve the conflicts there "
                "(`git status`), then `git stash drop` (the changes stay in the stash until you do)"
            )
        say(f"{pin.name}: re-applied local changes on top of {pin.ref}")
    say(f"{pin.name}: at {pin.ref} ({commit[:12]})")
    return RepoState(pin.name, str(repo), pin.uri, pin.ref, head(repo), True, is_dirty(repo), "updated")


def bundle_repo(repo: Path, target: Path) -> None:
    """Write a git bundle with the clone's checkout, remote branches and tags."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:
        git(repo, "bundle", "create", "--quiet", str(tmp), "HEAD", "--remotes=origin", "--tags")


def sync_all(pins: Sequence[RepoPin], repos_dir: Path, **kwargs) -> list[RepoState]:
    return [sync(pin, repos_dir, **kwargs) for pin in pins]
