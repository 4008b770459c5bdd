"""Rendered jobs submitted through titanenv.slurm.submit to the real local cluster."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.fixtures.slurm import LocalSlurm
from tests.helpers import REPO_ROOT
from titanenv import sbatch
from titanenv.config import load_config
from titanenv.runs import find_job, list_runs, new_run
from titanenv.slurm import SubmitError, submit
from titanenv.slurm import cli
from titanenv.slurm import jobs as slurm_jobs


def local_config(**slurm: object):
    return load_config(REPO_ROOT, flags={"machine": "local", **{f"slurm.{k}": v for k, v in slurm.items()}})


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True).stdout


def test_rendered_job_runs_where_its_record_says(slurm_env: LocalSlurm) -> None:
    config = local_config()
    run = new_run(config, "preprocess")
    assert not run.path.exists()
    command = ["bash", "-c", 'echo "job $SLURM_JOB_ID in $PWD"; echo "on stderr" >&2', "it's a $(name)"]
    script = sbatch.preprocess_script(config, run_dir=run.path, command=command)
    lines: list[str] = []

    submission = submit(config, run, script, echo=lines.append)

    (job_id,) = submission.job_ids
    assert submission.script_path == run.path / "job.sbatch"
    assert submission.script_path.read_text() == script
    assert lines[0] == f"submitted job {job_id}: {submission.script_path}"
    (done,) = slurm_jobs.wait([job_id], interval=0.2, echo=lambda _: None)
    assert done.state == "COMPLETED" and done.exit_code == 0
    # Outputs land in the run directory under the template's names.
    assert (run.path / f"preprocess-{job_id}.out").read_text() == f"job {job_id} in {run.path}\n"
    assert (run.path / f"preprocess-{job_id}.err").read_text() == "on stderr\n"
    # The job ran in the partition the local profile names for the debug kind.
    assert slurm_env.job(job_id).fields["Partition"] == "devel"

    record = json.loads(submission.record_path.read_text())
    assert submission.record_path == run.path / "run.json"
    assert record["job_ids"] == [job_id]
    assert record["machine"] == "local" and record["profiles"] == ["local"]
    assert record["script"] == {"file": "job.sbatch", "sha256": hashlib.sha256(script.encode()).hexdigest()}
    assert record["git"]["commit"] == git("rev-parse", "HEAD").strip()
    assert record["git"]["dirty"] == bool(git("status", "--porcelain").strip())
    assert record["config"]["slurm"]["partition"] == "debug"
    assert record["config"]["derived"]["runs_dir"] == str(config.paths.runs_dir)
    submitted = datetime.fromisoformat(record["submitted"])
    assert submitted.tzinfo is not None and abs((datetime.now(timezone.utc) - submitted).total_seconds()) < 600
    assert find_job(config, job_id).run_dir == run.path


def test_srun_ranks_span_both_nodes(slurm_env: LocalSlurm) -> None:
    """`srun` in a two-node job starts two tasks that see their rank and the task count."""
    config = local_config(nodes=2, partition="normal")
    run = new_run(config, "parallel")
    report = 'echo "$SLURM_PROCID $SLURM_NTASKS $SLURMD_NODENAME" > "rank-$SLURM_PROCID.txt"'
    script = sbatch.preprocess_parallel_script(config, run_dir=run.path, command=["bash", "-c", report])
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=batch" in script

    submission = submit(config, run, script, echo=lambda _: None)

    (done,) = slurm_jobs.wait(submission.job_ids, interval=0.2, echo=lambda _: None)
    assert done.state == "COMPLETED" and done.nodes == 2
    ranks = [(run.path / f"rank-{i}.txt").read_text().split() for i in range(2)]
    assert [r[:2] for r in ranks] == [["0", "2"], ["1", "2"]]
    assert {r[2] for r in ranks} == {"node1", "node2"}


def test_chain_runs_links_in_order_each_after_the_last(slurm_env: LocalSlurm) -> None:
    config = local_config()
    run = new_run(config, "train")
    # Each link "resumes": it reads the previous link's step and writes its own.
    resume = 'step=$(cat step 2>/dev/null || echo 0); echo $((step + 1)) > step; echo "$SLURM_JOB_ID" >> links'
    script = sbatch.preprocess_script(config, run_dir=run.path, command=["bash", "-c", resume])

    submission = submit(config, run, script, chain=3, echo=lambda _: None)

    first, second, third = submission.job_ids
    assert slurm_env.job(second).fields["Dependency"].startswith(f"afterok:{first}")
    assert slurm_env.job(third).fields["Dependency"].startswith(f"afterok:{second}")
    finished = slurm_jobs.wait(submission.job_ids, interval=0.2, echo=lambda _: None)
    assert [job.state for job in finished] == ["COMPLETED"] * 3
    assert (run.path / "step").read_text() == "3\n"
    assert (run.path / "links").read_text().split() == [first, second, third]
    assert json.loads(submission.record_path.read_text())["job_ids"] == [first, second, third]


def test_a_later_submission_waits_for_an_earlier_one(slurm_env: LocalSlurm, tmp_path: Path) -> None:
    config = local_config()
    data = tmp_path / "data.txt"
    early_run, late_run = new_run(config, "preprocess"), new_run(config, "train")
    early = submit(
        config, early_run,
        sbatch.preprocess_script(config, run_dir=early_run.path, command=["bash", "-c", f"sleep 1; echo data > {data}"]),
        echo=lambda _: None,
    )
    late = submit(
        config, late_run,
        sbatch.preprocess_script(config, run_dir=late_run.path, command=["bash", "-c", f"cat {data} > seen.txt"]),
        dependency=early.job_id, echo=lambda _: None,
    )
    assert slurm_jobs.lookup([late.job_id]).jobs[0].why == "Dependency"
    slurm_jobs.wait([late.job_id], interval=0.2, echo=lambda _: None)
    assert (late_run.path / "seen.txt").read_text() == "data\n"


def test_a_failed_link_stops_the_chain(slurm_env: LocalSlurm) -> None:
    config = local_config()
    run = new_run(config, "train")
    script = sbatch.preprocess_script(config, run_dir=run.path, command=["bash", "-c", "echo diverged >&2; exit 3"])
    submission = submit(config, run, script, chain=3, echo=lambda _: None)
    changes: list[str] = []

    with pytest.raises(slurm_jobs.JobFailed) as failure:
        slurm_jobs.wait(submission.job_ids, interval=0.2, echo=changes.append)

    first, second, third = slurm_jobs.lookup(submission.job_ids).jobs
    assert first.state == "FAILED" and first.exit_code == 3
    assert second.state == third.state == "CANCELLED"
    assert "DependencyNeverSatisfied" in second.reason
    message = str(failure.value)
    assert message.startswith(f"job {first.job_id} (preprocess) FAILED (exit code 3): diverged (see ")
    assert message.endswith("; 2 more job(s) did not complete") and "\n" not in message
    assert f"job {first.job_id} (preprocess): FAILED (exit code 3)" in changes


def test_dry_run_shows_everything_and_creates_nothing(slurm_env: LocalSlurm) -> None:
    config = local_config(time="00:05:00")
    run = new_run(config, "train")
    script = sbatch.preprocess_script(config, run_dir=run.path, command=["true"])
    lines: list[str] = []

    submission = submit(config, run, script, dry=True, chain=2, dependency="123", echo=lines.append)

    assert submission.job_ids == [] and submission.script_path is None and submission.record_path is None
    text = "\n".join(lines)
    assert script.rstrip("\n") in text
    assert f"sbatch --parsable --dependency=afterok:123 --kill-on-invalid-dep=yes {run.path}/job.sbatch" in text
    assert "# would run: sbatch --parsable --dependency=afterok:<job 1> --kill-on-invalid-dep=yes" in text
    assert not config.paths.runs_dir.exists()
    assert slurm_env.job_ids() == []


def test_bad_dependency_is_refused_before_anything_happens(slurm_env: LocalSlurm) -> None:
    config = local_config()
    run = new_run(config, "train")
    with pytest.raises(SubmitError, match=r"^--dependency 'afterok:abc': give a job id"):
        submit(config, run, "#!/bin/bash\ntrue\n", dependency="afterok:abc", echo=lambda _: None)
    assert not config.paths.runs_dir.exists()


def test_runs_are_listed_newest_first(slurm_env: LocalSlurm) -> None:
    config = local_config()
    names = []
    for name in ("preprocess", "train"):
        run = new_run(config, name)
        submit(config, run, sbatch.preprocess_script(config, run_dir=run.path, command=["true"]), echo=lambda _: None)
        names.append(name)
    records = list_runs(config)
    assert [r.name for r in records] == list(reversed(names))
    table = slurm_jobs.runs_table(config)
    header, *rows = table.splitlines()
    assert header.split() == ["RUN", "SUBMITTED", "MACHINE", "GIT", "JOBS", "STATE"]
    assert {row.split()[0].split("/")[0] for row in rows[:2]} == set(names)
    assert all(row.split()[2] == "local" for row in rows[:2])


def test_a_forgotten_job_is_answered_from_the_completion_log_and_its_record(
    slurm_env: LocalSlurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = local_config()
    run = new_run(config, "preprocess")
    script = sbatch.preprocess_script(config, run_dir=run.path, command=["bash", "-c", "echo kept; exit 4"])
    submission = submit(config, run, script, echo=lambda _: None)
    with pytest.raises(slurm_jobs.JobFailed):
        slurm_jobs.wait(submission.job_ids, interval=0.2, echo=lambda _: None)

    # slurmctld forgets ended jobs after MinJobAge; have that time pass.
    monkeypatch.setattr(cli, "squeue_json", lambda **_: [])
    monkeypatch.setattr(cli, "scontrol_job", lambda _: None)

    found = slurm_jobs.lookup(submission.job_ids)
    (job,) = found.jobs
    # No slurmdbd here: the real job-completion log answers, and a note says so.
    assert (job.state, job.exit_code, job.source, job.name) == ("FAILED", 4, "jobcomp", "preprocess")
    assert found.notes == [slurm_jobs.NO_ACCOUNTING_NOTE]
    paths = slurm_jobs.log_paths(submission.job_id, record_script=find_job(config, submission.job_id).script_path)
    assert paths.source == "run record"
    assert paths.stdout == run.path / f"preprocess-{submission.job_id}.out"
    assert paths.stdout.read_text() == "kept\n"
