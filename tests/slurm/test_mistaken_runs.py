"""Tasks never act on the wrong run or job: unknown ids, unreadable records, vanished run directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.fixtures.slurm import LocalSlurm
from tests.helpers import invoke_ok, one_line_error, run_invoke, submitted_ids


def _runs(home: Path, name: str) -> list[Path]:
    return sorted(home.glob(f"trustllm/scratch/**/runs/{name}/*/run.json"))


def test_a_dependency_on_an_unknown_job_is_refused(probe_project: Path, slurm_env: LocalSlurm) -> None:
    line = one_line_error(run_invoke("probe.submit", "--dependency", "99999999", cwd=probe_project))
    assert line.startswith("error: --dependency '99999999': job 99999999 is unknown to Slurm here")
    line = one_line_error(run_invoke("probe.submit", "--dependency", "afterany:99999998", cwd=probe_project))
    assert "job 99999998 is unknown to Slurm here" in line
    assert slurm_env.job_ids() == [] and _runs(Path.home(), "probe") == []
    # A known job is a fine dependency, running or ended.
    (first,) = submitted_ids(invoke_ok("probe.submit", cwd=probe_project).stdout)
    (second,) = submitted_ids(invoke_ok("probe.submit", "--dependency", first, cwd=probe_project).stdout)
    invoke_ok("jobs.wait", "--job", f"{first},{second}")


def test_an_unreadable_newest_record_is_listed_and_never_passed_over(probe_project: Path,
                                                                      slurm_env: LocalSlurm) -> None:
    (old_job,) = submitted_ids(invoke_ok("probe.submit", "--command", "sleep 300", cwd=probe_project).stdout)
    (new_job,) = submitted_ids(invoke_ok("probe.submit", "--command", "sleep 300", cwd=probe_project).stdout)
    by_job = {json.loads(path.read_text())["job_ids"][0]: path for path in _runs(Path.home(), "probe")}
    older, newer = by_job[old_job], by_job[new_job]
    newer.write_text(newer.read_text()[:40])  # truncated

    listing = invoke_ok("jobs.status", "--runs").stdout
    assert "UNREADABLE run.json" in listing and f"warning: {newer}: cannot read the run record" in listing
    for args in (("jobs.wait",), ("jobs.cancel", "--run", "probe"), ("jobs.logs", "--run", "latest"),
                 ("jobs.status", "--run", "probe")):
        line = one_line_error(run_invoke(*args))
        assert line.startswith(f"error: {newer}: the newest run record"), (args, line)
        assert "refusing to act on an older run" in line
    # Neither job was touched; the older one is still reachable by its directory.
    assert slurm_env.job(old_job).state == slurm_env.job(new_job).state == "RUNNING" or \
        {slurm_env.job(old_job).state, slurm_env.job(new_job).state} <= {"RUNNING", "PENDING"}
    cancelled = invoke_ok("jobs.cancel", "--run", str(older.parent)).stdout
    assert old_job in cancelled and new_job not in cancelled
    invoke_ok("jobs.cancel", "--job", new_job)


def test_unknown_jobs_are_one_line_errors(slurm_env: LocalSlurm) -> None:
    line = one_line_error(run_invoke("jobs.cancel", "--job", "99999999"))
    assert line == "error: job 99999999 is unknown to Slurm here; nothing was cancelled"
    line = one_line_error(run_invoke("jobs.logs", "--job", "0"))
    assert line == "error: job id '0': expected a number such as 123 (or 123_4 for an array task)"
    line = one_line_error(run_invoke("jobs.logs", "--job", "99999999"))
    assert line.startswith("error: job 99999999 is unknown to slurmctld and no run record lists it")


def test_a_failed_job_whose_run_directory_is_gone_says_so(probe_project: Path, slurm_env: LocalSlurm) -> None:
    (job_id,) = submitted_ids(invoke_ok("probe.submit", "--command", "exit 3", cwd=probe_project).stdout)
    run_dir = _runs(Path.home(), "probe")[-1].parent
    assert run_invoke("jobs.wait", "--job", job_id).returncode == 1
    shutil.rmtree(run_dir)
    line = one_line_error(run_invoke("jobs.logs", "--job", job_id))
    assert line == f"error: job {job_id} (FAILED) wrote its log into {run_dir}, which no longer exists"
    line = one_line_error(run_invoke("jobs.wait", "--job", job_id))
    assert line.startswith(f"error: job {job_id} (preprocess-parallel) FAILED (exit code 3)")
    assert line.endswith(f"(its run directory {run_dir} no longer exists)")


def test_a_job_name_with_a_bar_is_read_back_whole_from_the_completion_log(probe_project: Path,
                                                                         slurm_env: LocalSlurm) -> None:
    from titanenv.slurm import cli

    (job_id,) = submitted_ids(invoke_ok("probe.submit", "--job-name", "a|b", cwd=probe_project).stdout)
    slurm_env.wait(job_id)
    rows = [row for row in cli.sacct([job_id], completion=True) if row["JobID"] == job_id]
    assert [(row["JobName"], row["State"]) for row in rows] == [("a|b", "COMPLETED")]
