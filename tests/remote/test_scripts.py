"""The shell scripts sent to the host, run here by a real `sh` against a real git checkout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from titanenv.config import load_config
from titanenv.remote import scripts
from titanenv.remote.target import RemoteOptions, RemoteTarget

NASTY = ["--text", "two words", "it's", '"quoted"', "$(touch pwned)", "; touch pwned2", "back\\slash", "*"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(cwd), *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout whose .venv/bin/invoke prints its arguments, one per line."""
    root = tmp_path / "home" / "project dir" / "titanenv"
    root.mkdir(parents=True)
    git(root, "init", "-q")
    (root / "README").write_text("x\n")
    git(root, "add", "README")
    git(root, "commit", "-q", "-m", "first")
    stub = root / ".venv" / "bin" / "invoke"
    stub.parent.mkdir(parents=True)
    stub.write_text('#!/bin/sh\nprintf "cwd=%s\\n" "$PWD"\nprintf "arg=%s\\n" "$@"\nprintf "FOO=%s\\n" "$FOO"\n')
    stub.chmod(0o755)
    (root / ".git" / "info" / "exclude").write_text(".venv/\n")
    return root


def target_at(path: str, **settings: object) -> RemoteTarget:
    remote = RemoteOptions.from_config(load_config(REPO_ROOT)).with_changes(**settings)
    return RemoteTarget(host="login1", machine="local", checkout=path, settings=remote)


def sh(script: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return subprocess.run(["sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


def test_task_arguments_arrive_verbatim_in_the_checkout(checkout: Path, tmp_path: Path) -> None:
    commit = git(checkout, "rev-parse", "HEAD")
    home = tmp_path / "home"
    target = target_at("~/project dir/titanenv", shell_setup=["export FOO='set up'"])
    result = sh(scripts.task_script(target, commit, ["data.preprocess", *NASTY]), home, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"cwd={checkout}"
    assert lines[1:-1] == [f"arg={a}" for a in ["data.preprocess", *NASTY]]
    assert lines[-1] == "FOO=set up"
    assert not list(tmp_path.rglob("pwned*"))


def test_checkout_at_another_commit_is_refused(checkout: Path, tmp_path: Path) -> None:
    other = "0123456789abcdef0123456789abcdef01234567"
    result = sh(scripts.task_script(target_at(str(checkout)), other, ["config.show"]), tmp_path, tmp_path)
    head = git(checkout, "rev-parse", "HEAD")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"error: the checkout {checkout} on login1 is at {head[:12]}, this laptop at {other[:12]}: update it with "
        "`fab -H login1 remote.bootstrap`, or run anyway with INVOKE_REMOTE_CHECK_COMMIT=false\n"
    )
    # No commit given: no check.
    assert sh(scripts.task_script(target_at(str(checkout)), None, ["config.show"]), tmp_path, tmp_path).returncode == 0


def test_missing_checkout_venv_and_setup_each_say_what_to_do(checkout: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = sh(scripts.task_script(target_at("~/elsewhere"), None, ["x"]), home, tmp_path)
    assert (missing.returncode, missing.stderr) == (
        1, f"error: no titanenv checkout at {home}/elsewhere on login1: create it with `fab -H login1 remote.bootstrap`\n"
    )
    (checkout / ".venv" / "bin" / "invoke").unlink()
    no_venv = sh(scripts.task_script(target_at(str(checkout)), None, ["x"]), home, tmp_path)
    assert no_venv.returncode == 1
    assert no_venv.stderr == (
        f"error: {checkout} on login1 has no Python environment (.venv/bin/invoke): run `fab -H login1 remote.bootstrap`\n"
    )
    setup = sh(scripts.task_script(target_at(str(checkout), shell_setup=["module load Nope"]), None, ["x"]), home, tmp_path)
    assert setup.returncode == 1
    assert setup.stderr.splitlines()[-1] == "error: remote.shell_setup line `module load Nope` failed on login1"


def test_probe_reports_the_checkout(checkout: Path, tmp_path: Path) -> None:
    commit = git(checkout, "rev-parse", "HEAD")
    branch = git(checkout, "symbolic-ref", "--short", "HEAD")
    target = target_at(str(checkout))
    probe = scripts.parse_probe(sh(scripts.probe_script(target, branch, commit), tmp_path, tmp_path).stdout)
    assert probe.exists and probe.is_git and not probe.dirty and probe.has_commit
    assert (probe.path, probe.head, probe.branch, probe.branch_tip) == (str(checkout), commit, branch, commit)
    assert probe.python_ok  # python3 here is >= 3.10
    (checkout / "new.txt").write_text("untracked\n")
    assert scripts.parse_probe(sh(scripts.probe_script(target), tmp_path, tmp_path).stdout).dirty
    nothing = scripts.parse_probe(sh(scripts.probe_script(target_at("~/none")), tmp_path, tmp_path).stdout)
    assert (nothing.exists, nothing.path) == (False, f"{tmp_path}/none")
    # A directory inside another repository is not a checkout of its own.
    inner = checkout / "sub"
    inner.mkdir()
    (inner / "f").write_text("x")
    assert not scripts.parse_probe(sh(scripts.probe_script(target_at(str(inner))), tmp_path, tmp_path).stdout).is_git


def test_upload_script_creates_a_private_file(tmp_path: Path) -> None:
    script = scripts.upload_script(target_at("~/x"), "~/deep er/file.bundle")
    result = subprocess.run(
        ["sh", "-c", script], input=b"payload", env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)}, capture_output=True
    )
    assert result.returncode == 0, result.stderr
    stored = tmp_path / "deep er" / "file.bundle"
    assert stored.read_bytes() == b"payload"
    assert stored.stat().st_mode & 0o077 == 0
