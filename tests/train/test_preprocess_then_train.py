"""The documented chain on a cluster: data.preprocess submitted, then train.submit following it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fixtures.slurm import LocalSlurm
from tests.helpers import SHARED_DATA, run_invoke, submitted_ids

pytestmark = [pytest.mark.slurm, pytest.mark.train]

WIKI = SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"
TRAIN = ["--steps", "2", "--batch-size", "2", "--time", "00:10:00", "--", "--metrics.log_freq", "1"]


def ok(result):
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def _wait_all(ids: list[str]) -> str:
    waited = run_invoke("jobs.wait", "--job", ",".join(ids), "--interval", "0.5", timeout=900)
    logs = "".join(run_invoke("jobs.logs", "--job", job_id, *flag).stdout for job_id in ids for flag in ((), ("--err",)))
    assert waited.returncode == 0, (waited.stdout + waited.stderr + logs)[-4000:]
    return logs


def test_preprocess_then_train_in_one_call(tmp_path: Path, slurm_env: LocalSlurm) -> None:
    out = tmp_path / "one" / "wiki"
    result = ok(run_invoke("data.preprocess", "--submit", "--input", str(WIKI), "--output", str(out),
                           "train.submit", "--name", "one", "--dataset", str(out), *TRAIN, timeout=600))
    preprocess_job, train_job = submitted_ids(result.stdout)
    assert f"dataset {out} is being written by job {preprocess_job}: training follows it" in result.stdout
    logs = _wait_all([preprocess_job, train_job])
    _assert_followed(slurm_env, preprocess_job, train_job)
    assert re.search(r"step:\s+2\s", re.sub(r"\x1b\[[0-9;]*m", "", logs)), logs[-3000:]


def _assert_followed(slurm_env: LocalSlurm, first: str, second: str) -> None:
    """The second job started only once the first had ended (Slurm's own times)."""
    ended = slurm_env.job(first).fields["EndTime"]
    started = slurm_env.job(second).fields["StartTime"]
    assert started >= ended, (first, ended, second, started)


def test_preprocess_then_train_in_two_calls_and_the_dataset_checked_at_start(tmp_path: Path,
                                                                              slurm_env: LocalSlurm) -> None:
    out = tmp_path / "two" / "wiki"
    (preprocess_job,) = submitted_ids(ok(run_invoke("data.preprocess", "--submit", "--input", str(WIKI),
                                                    "--output", str(out))).stdout)
    (train_job,) = submitted_ids(ok(run_invoke("train.submit", "--name", "two", "--dataset", str(out),
                                               *TRAIN, timeout=600)).stdout)
    _wait_all([preprocess_job, train_job])
    _assert_followed(slurm_env, preprocess_job, train_job)

    # A dataset that vanished before its training job started: the job says so in one line.
    missing = tmp_path / "gone" / "wiki"
    (first,) = submitted_ids(ok(run_invoke("data.preprocess", "--submit", "--input", str(WIKI),
                                           "--output", str(missing))).stdout)
    # A held job keeps training from starting until the dataset is gone.
    blocker = slurm_env.run(["sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap", "true"]).stdout.strip()
    (second,) = submitted_ids(ok(run_invoke("train.submit", "--name", "gone", "--dataset", str(missing),
                                            "--dependency", blocker, *TRAIN, timeout=600)).stdout)
    ok(run_invoke("jobs.wait", "--job", first, "--interval", "0.5", timeout=600))
    Path(f"{missing}.idx").unlink()
    slurm_env.run(["scontrol", "release", blocker])
    waited = run_invoke("jobs.wait", "--job", second, "--interval", "0.5", timeout=600)
    assert waited.returncode == 1
    err = run_invoke("jobs.logs", "--job", second, "--err").stdout
    assert f"error: dataset {missing}.idx: no such index file; run data.preprocess to make it" in err


def test_an_ended_or_unknown_writer_is_no_excuse(tmp_path: Path, slurm_env: LocalSlurm) -> None:
    result = run_invoke("train.submit", "--name", "none", "--dataset", str(tmp_path / "nothing"), *TRAIN)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: dataset {tmp_path / 'nothing'}.idx: no such index file; " \
                                    "run data.preprocess to make it"
