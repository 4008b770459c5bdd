"""Run records without Slurm: paths, contents, atomic writes, git state, finding runs again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from titanenv.config import load_config
from titanenv.git import git_state
from titanenv.runs import (
    BrokenRecord, RunError, find_job, find_run, list_runs, new_run, scan_runs, write_record,
)


@pytest.fixture
def config():
    return load_config(REPO_ROOT, flags={"machine": "local"})


def test_new_run_names_a_fresh_directory_and_creates_nothing(config) -> None:
    first, second = new_run(config, "train"), new_run(config, "train")
    assert first.path.parent == config.paths.runs_dir / "train"
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", first.path.name)
    assert first.path != second.path
    assert not config.paths.runs_dir.exists()
    with pytest.raises(RunError, match=r"^run name '\.\./x': use letters"):
        new_run(config, "../x")


def test_record_without_slurm(config) -> None:
    run = new_run(config, "local-train")
    path = write_record(config, run, job_ids=[], extra={"command": ["torchrun", "a b"], "steps": 10})
    assert path == run.path / "run.json"
    assert sorted(p.name for p in run.path.iterdir()) == ["run.json"]  # no temporary file left
    record = json.loads(path.read_text())
    assert record["job_ids"] == [] and record["script"] is None
    assert record["extra"] == {"command": ["torchrun", "a b"], "steps": 10}
    assert record["config"]["machine"] == "local"
    assert record["name"] == "local-train" and record["run_dir"] == str(run.path)


def test_record_names_and_hashes_the_script(config) -> None:
    run = new_run(config, "train")
    run.path.mkdir(parents=True)
    text = "#!/bin/bash\necho hi\n"
    (run.path / "job.sbatch").write_text(text)
    by_name = json.loads(write_record(config, run, job_ids=["7"], script="job.sbatch").read_text())
    by_text = json.loads(write_record(config, run, job_ids=["7"], script=text).read_text())
    expected = subprocess.run(["sha256sum", str(run.path / "job.sbatch")], capture_output=True, text=True).stdout.split()[0]
    assert by_name["script"] == by_text["script"] == {"file": "job.sbatch", "sha256": expected}
    with pytest.raises(RunError, match="no such script to record"):
        write_record(config, run, job_ids=["7"], script="missing.sbatch")


def test_runs_are_found_by_directory_name_latest_and_job(config) -> None:
    older = new_run(config, "preprocess")
    write_record(config, older, job_ids=["11"])
    newer = new_run(config, "train")
    write_record(config, newer, job_ids=["12", "13"])
    broken = config.paths.runs_dir / "train" / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    os.utime(broken, (time.time() - 3600, time.time() - 3600))  # an old run, renamed by hand

    assert [r.run_dir for r in list_runs(config)] == [newer.path, older.path]
    assert [e.run_dir for e in scan_runs(config)] == [newer.path, older.path, broken]
    assert isinstance(scan_runs(config)[-1], BrokenRecord)
    assert find_run(config, "latest").run_dir == newer.path
    assert find_run(config, "preprocess").run_dir == older.path
    assert find_run(config, str(older.path)).run_dir == older.path
    assert find_run(config, f"train/{newer.path.name}").run_dir == newer.path
    assert find_job(config, "13").run_dir == newer.path
    assert find_job(config, "14") is None
    with pytest.raises(RunError, match=r"^no run 'eval' under "):
        find_run(config, "eval")
    # Once the unreadable record is the newest, nothing resolves past it.
    os.utime(broken)
    for ref in ("latest", "train"):
        with pytest.raises(RunError, match=rf"^{broken}/run.json: the newest run record \({ref}\) cannot be read"):
            find_run(config, ref)
    assert find_run(config, "preprocess").run_dir == older.path


def test_a_record_write_that_fails_leaves_the_old_record_and_no_temporary(config, monkeypatch) -> None:
    run = new_run(config, "train")
    path = write_record(config, run, job_ids=["1"])
    before = path.read_text()

    def rename_fails(source, target):
        assert Path(source).read_text().startswith("{")  # the new record was written in full, elsewhere
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", rename_fails)
    with pytest.raises(OSError):
        write_record(config, run, job_ids=["1", "2"])
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in run.path.iterdir()) == ["run.json"]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def age(repo: Path) -> None:
    """Date every file of the repository (git's own included) a minute back, as an untouched checkout is."""
    past = time.time() - 60
    for path in [repo, *repo.rglob("*")]:
        os.utime(path, (past, past), follow_symlinks=False)


def test_git_state_notices_every_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.toml").write_text("steps = 10\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    age(repo)

    clean = git_state(repo)
    assert clean == {"commit": head, "branch": "main", "dirty": False, "changed": []}
    # Unchanged since: the remembered state is reused, git is not even run.
    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(tmp_path / "no-git-here"))
        assert git_state(repo) == clean

    (repo / "train.toml").write_text("steps = 20\n")
    assert git_state(repo)["changed"] == ["train.toml"]
    (repo / "train.toml").write_text("steps = 10\n")
    age(repo)
    assert git_state(repo)["dirty"] is False
    (repo / "notes.txt").write_text("untracked\n")
    assert git_state(repo) == {"commit": head, "branch": "main", "dirty": True, "changed": ["notes.txt"]}


def test_git_state_of_a_plain_directory_is_an_error_entry(tmp_path: Path) -> None:
    state = git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None and "not a git repository" in state["error"]
