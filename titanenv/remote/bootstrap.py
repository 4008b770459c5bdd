"""Create or update this repository's checkout on a host, and its Python environment.

The host gets exactly the laptop's commit, shipped as a git bundle over the
same SSH connection (so it need not be pushed anywhere, and jump hosts and
host key checks apply as for tasks); only the commits the host lacks are
sent. Nothing there is lost: uncommitted changes block the update unless
``force``, which stashes them; a branch that has commits the laptop lacks
blocks it unless ``force``, which keeps the old tip as a backup branch.

The venv (``.venv`` in the checkout) is made with ``remote.python`` and
reinstalled only when ``pyproject.toml`` or the install options change.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from titanenv import git
from titanenv.remote import scripts
from titanenv.remote.errors import RemoteError
from titanenv.remote.session import RemoteSession

Printer = Callable[[str], None]


def install_stamp(session: RemoteSession, commit: str) -> str:
    """Identifies what the venv was installed from: pyproject.toml and the install settings."""
    settings = session.target.settings
    digest = hashlib.sha256(git.file_at(session.repo_root, commit, "pyproject.toml"))
    for part in (settings.python, *settings.venv_options, "|", *settings.pip_options, "|", *settings.extras):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def bootstrap(session: RemoteSession, *, force: bool = False, reinstall: bool = False, out: Printer = print) -> None:
    """Bring the checkout on the host to this commit and its environment up to date."""
    repo = git.laptop_repo(session.repo_root)
    host = session.host
    if repo.dirty:
        print(f"note: uncommitted changes here are not sent; {host} gets commit {repo.commit[:12]}", file=sys.stderr)
    probe = session.probe(branch=repo.branch, commit=repo.commit)
    create = not probe.exists or (probe.empty and not probe.is_git)
    if probe.exists and not create and not probe.is_git:
        raise RemoteError(
            f"{probe.path} on {host} exists and is no git checkout of its own: move it away, or point remote.checkout elsewhere"
        )
    stash, backup = False, ""
    if not create:
        if probe.dirty:
            if not force:
                raise RemoteError(
                    f"{probe.path} on {host} has uncommitted changes: commit or stash them there, "
                    "or pass --force to stash them (git stash list shows them afterwards)"
                )
            stash = True
        tip = probe.branch_tip
        if tip and tip != repo.commit and not git.is_ancestor(repo.root, tip, repo.commit):
            if not force:
                raise RemoteError(
                    f"branch {repo.branch} in {probe.path} on {host} has commits this laptop lacks (at {tip[:12]}): "
                    f"bring them here first, or pass --force to keep them as branch titanenv-backup-{tip[:12]}"
                )
            backup = f"titanenv-backup-{tip[:12]}"

    moves = create or stash or backup or probe.head != repo.commit or (repo.branch and probe.branch != repo.branch)
    if moves:
        bundle_path = ""
        if not probe.has_commit:
            base = probe.head if probe.head and git.is_ancestor(repo.root, probe.head, repo.commit) else None
            bundle_path = _upload_bundle(session, repo, base)
        session_run(
            session,
            scripts.update_script(
                session.target,
                path=probe.path,
                create=create,
                bundle=bundle_path or None,
                commit=repo.commit,
                branch=repo.branch,
                origin_url=repo.origin_url,
                stash=stash,
                backup_branch=backup,
            ),
            f"updating {probe.path} on {host}",
        )
    stamp = install_stamp(session, repo.commit)
    make_venv = reinstall or not probe.venv_ok
    installs = make_venv or probe.installed != stamp
    if make_venv and not probe.python_ok:
        python = session.target.settings.python
        raise RemoteError(
            f"remote.python ({python}) on {host} is missing or older than 3.10: set remote.python, or put a newer "
            "one on PATH with remote.shell_setup (e.g. ['module load Stages/2025 Python'])"
        )
    if installs:
        out(f"{host}: installing the Python environment in {probe.path}/.venv")
        session_run(
            session,
            scripts.install_script(session.target, path=probe.path, stamp=stamp, make_venv=make_venv),
            f"installing the Python environment on {host}",
        )
    where = repo.branch or "detached HEAD"
    state = "installed" if installs else "up to date"
    out(f"{host}: {probe.path} at {repo.commit[:12]} ({where}); Python environment {state}")


def session_run(session: RemoteSession, script: str, what: str) -> None:
    pty = session.target.settings.pty
    status = session.exit_status(session.run(script, pty=pty))
    if status != 0:
        raise RemoteError(f"{what} failed (exit status {status}); its output is above")


def _upload_bundle(session: RemoteSession, repo: git.LaptopRepo, base: str | None) -> str:
    """Put a bundle of the commits the host lacks beside the checkout there; its path there."""
    with tempfile.TemporaryDirectory(prefix="titanenv-bundle-") as tmp:
        local = Path(tmp) / "titanenv.bundle"
        git.make_bundle(repo.root, local, since=base)
        probe_path = session.target.checkout
        remote = f"{probe_path}.{repo.commit[:12]}.bundle"
        session.upload(local.read_bytes(), remote)
    return remote


@dataclass(frozen=True)
class Status:
    host: str
    machine: str
    path: str
    exists: bool
    head: str
    commit: str
    branch: str
    dirty: bool
    environment: str  # "up to date", "outdated", "missing"

    @property
    def ready(self) -> bool:
        return self.exists and self.head == self.commit and self.environment == "up to date"

    def lines(self) -> list[str]:
        hint = f"run `fab -H {self.host} remote.bootstrap`"
        rows = [("host", f"{self.host} (machine {self.machine})"), ("checkout", self.path)]
        if not self.exists:
            rows.append(("state", f"missing: {hint}"))
        else:
            same = "same as here" if self.head == self.commit else f"this laptop is at {self.commit[:12]}: {hint}"
            rows.append(("commit", f"{self.head[:12] or 'none'} {self.branch or '(detached)'} — {same}"))
            rows.append(("changes", "uncommitted changes there" if self.dirty else "none"))
            env = self.environment if self.environment == "up to date" else f"{self.environment}: {hint}"
            rows.append(("python", f".venv {env}"))
        return [f"{name:<9} {value}" for name, value in rows]


def status(session: RemoteSession) -> Status:
    """The checkout on the host compared with this one (read-only)."""
    commit = git.head_commit(session.repo_root)
    probe = session.probe()
    if not probe.venv_ok:
        environment = "missing"
    elif probe.installed == install_stamp(session, commit):
        environment = "up to date"
    else:
        environment = "outdated"
    return Status(
        host=session.host,
        machine=session.target.machine,
        path=probe.path,
        exists=probe.exists and probe.is_git,
        head=probe.head,
        commit=commit,
        branch=probe.branch,
        dirty=probe.dirty,
        environment=environment,
    )
