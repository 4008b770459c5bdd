"""`invoke jobs.*` and a submitting task's Slurm flags, as a user runs them, on the real cluster."""

from __future__ import annotations

import time
from pathlib import Path

from tests.fixtures.slurm import LocalSlurm
from tests.helpers import invoke_ok, one_line_error, run_invoke, submitted_ids


def test_flags_override_the_machine_profile(probe_project: Path, slurm_env: LocalSlurm) -> None:
    result = invoke_ok(
        "probe.submit", "--dry", "--nodes", "2", "--partition", "large", "--time", "0:30:00",
        "--job-name", "sweep 1", "--account", "", "--chain", "2", "--dependency", "afterany:7",
        cwd=probe_project,
    )
    assert "#SBATCH --nodes=2" in result.stdout
    assert "#SBATCH --partition=large" in result.stdout
    assert "#SBATCH --time=0:30:00" in result.stdout
    assert "#SBATCH --job-name='sweep 1'" in result.stdout
    assert "--dependency=afterany:7 --kill-on-invalid-dep=yes" in result.stdout
    assert "--dependency=afterok:<job 1>" in result.stdout
    assert "submitted job" not in result.stdout
    assert slurm_env.job_ids() == []
    assert not list(Path.home().glob("trustllm/scratch/**/runs/*"))


def test_submit_status_logs_wait_through_invoke(probe_project: Path, slurm_env: LocalSlurm) -> None:
    submitted = invoke_ok("probe.submit", "--command", "echo hello from $SLURM_PROCID; echo warn >&2", cwd=probe_project)
    (job_id,) = submitted_ids(submitted.stdout)

    waited = invoke_ok("jobs.wait", "--job", job_id, "--interval", "0.2")
    assert f"job {job_id} (preprocess-parallel): COMPLETED" in waited.stdout

    status = invoke_ok("jobs.status", "--job", job_id)
    header, row = status.stdout.splitlines()[:2]
    assert header.split() == ["JOBID", "NAME", "STATE", "ELAPSED", "NODES", "REASON"]
    assert row.split()[:3] == [job_id, "preprocess-parallel", "COMPLETED"] and row.split()[4] == "1"

    assert invoke_ok("jobs.logs", "--job", job_id).stdout == "hello from 0\n"
    assert invoke_ok("jobs.logs", "--run", "latest", "--err").stdout == "warn\n"
    assert invoke_ok("jobs.logs", "--run", "probe", "--tail", "1").stdout == "hello from 0\n"

    mine = invoke_ok("jobs.status")
    assert any(line.split()[:1] == [job_id] for line in mine.stdout.splitlines())
    # No slurmdbd here: the task says where its answers come from instead of failing.
    assert "accounting (sacct) is not configured here" in mine.stdout

    runs = invoke_ok("jobs.status", "--runs")
    header, row = runs.stdout.splitlines()[:2]
    assert header.split() == ["RUN", "SUBMITTED", "MACHINE", "GIT", "JOBS", "STATE"]
    assert row.startswith("probe/") and row.split()[-2:] == [job_id, "COMPLETED"]


def test_wait_exits_non_zero_for_a_failed_job(probe_project: Path, slurm_env: LocalSlurm) -> None:
    submitted = invoke_ok("probe.submit", "--command", "echo 'loss is nan' >&2; exit 3", cwd=probe_project)
    (job_id,) = submitted_ids(submitted.stdout)

    line = one_line_error(run_invoke("jobs.wait", "--job", job_id, "--interval", "0.2"))

    assert line.startswith(f"error: job {job_id} (preprocess-parallel) FAILED (exit code 3): loss is nan (see /")
    assert line.endswith(f"preprocess-parallel-{job_id}.err)")


def test_cancel_a_whole_chain_by_its_run(probe_project: Path, slurm_env: LocalSlurm) -> None:
    submitted = invoke_ok("probe.submit", "--command", "sleep 300", "--chain", "2", cwd=probe_project)
    first, second = submitted_ids(submitted.stdout)
    deadline = time.monotonic() + 30
    while slurm_env.job(first).state != "RUNNING":
        assert time.monotonic() < deadline, slurm_env.job(first).state
        time.sleep(0.1)

    cancelled = invoke_ok("jobs.cancel", "--run", "probe")

    states = {line.split()[0]: line.split()[2] for line in cancelled.stdout.splitlines()[1:]}
    assert states == {first: "CANCELLED", second: "CANCELLED"}
    line = one_line_error(run_invoke("jobs.wait", "--run", "latest"))
    assert line.startswith(f"error: job {first} (preprocess-parallel) CANCELLED")


def test_logs_follow_until_the_job_ends(probe_project: Path, slurm_env: LocalSlurm) -> None:
    submitted = invoke_ok("probe.submit", "--command", "echo first; sleep 2; echo second", cwd=probe_project)
    (job_id,) = submitted_ids(submitted.stdout)

    followed = invoke_ok("jobs.logs", "--job", job_id, "--follow")

    assert followed.stdout == "first\nsecond\n"
    assert slurm_env.job(job_id).state == "COMPLETED"
