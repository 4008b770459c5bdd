"""data.preprocess submitted to the test suite's real Slurm: one task, and --parallel over two."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.fixtures.slurm import LocalSlurm
from tests.helpers import GPT2, OWT, WIKI, pair_bytes, preprocess, run_invoke, submitted_ids, succeeded
from titanenv import locks
from titanenv.data import indexed
from titanenv.data import preprocess as pre

pytestmark = pytest.mark.slurm


def test_parallel_job_over_two_tasks_matches_the_local_run(tmp_path: Path, slurm_env: LocalSlurm) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(OWT.read_bytes() * 2)
    local = tmp_path / "local" / "train"
    succeeded(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), output=local))

    out = tmp_path / "slurm" / "train"
    submitted = succeeded(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--submit", "--parallel",
                              "--tasks-per-node", "2", "--chunk-mb", "1", "--partition", "debug", output=out))
    (job_id,) = submitted_ids(submitted.stdout)
    waited = run_invoke("jobs.wait", "--job", job_id, "--interval", "0.2", timeout=300)
    logs = run_invoke("jobs.logs", "--job", job_id).stdout
    assert waited.returncode == 0, waited.stdout + waited.stderr + logs
    assert "rank 0 of 2:" in logs and "rank 1 of 2:" in logs
    assert pair_bytes(out) == pair_bytes(local)
    assert not pre.parts_dir(out).exists()
    assert not locks.lock_path(out).exists()  # shared by both tasks, released by the one that merged


def test_single_job_and_dry_submission(tmp_path: Path, slurm_env: LocalSlurm) -> None:
    out = tmp_path / "train"
    dry = succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--submit", "--dry", output=out))
    assert "-m titanenv.data run" in dry.stdout and "# would run: sbatch --parsable" in dry.stdout
    assert not pre.parts_dir(out).exists() and slurm_env.job_ids() == []

    submitted = succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--submit", output=out))
    (job_id,) = submitted_ids(submitted.stdout)
    waited = run_invoke("jobs.wait", "--job", job_id, "--interval", "0.2", timeout=300)
    assert waited.returncode == 0, waited.stdout + run_invoke("jobs.logs", "--job", job_id, "--err").stdout
    assert "1,000 documents" in run_invoke("jobs.logs", "--job", job_id).stdout
    assert succeeded(run_invoke("data.verify", "--prefix", str(out))).stdout.startswith(f"ok {out}: 1,000 documents")


def test_a_queued_job_holds_its_output_and_a_cancelled_one_is_taken_over(tmp_path: Path,
                                                                         slurm_env: LocalSlurm) -> None:
    # A held job keeps the preprocessing job queued for as long as the test needs.
    blocker = slurm_env.run(["sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap", "true"]).stdout.strip()
    out = tmp_path / "train"
    submitted = succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), "--submit", "--parallel",
                              "--tasks-per-node", "2", "--dependency", blocker, output=out))
    (job_id,) = submitted_ids(submitted.stdout)
    holder = locks.read_holder(locks.lock_path(out))
    assert holder.job == job_id and f"--lock-token {holder.token}" in _script(submitted.stdout)

    # Here, with --overwrite too, and a second submission: refused while the job is queued.
    for extra in ([], ["--overwrite"], ["--submit"]):
        refused = preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), *extra, output=out)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"error: {out} is being written by Slurm job {job_id} (PENDING), submitted by host "
            f"{socket.gethostname()} pid {holder.pid} (since {holder.since}); wait for it (invoke jobs.wait --job "
            f"{job_id}), cancel it (invoke jobs.cancel --job {job_id}) or choose another --output"
        ]
    # Once the job has ended (here: cancelled before it started), its lock is taken over, saying so.
    succeeded(run_invoke("jobs.cancel", "--job", job_id))
    result = succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=out))
    assert (f"note: took over the lock of {out} from Slurm job {job_id}, submitted by host {socket.gethostname()} "
            f"pid {holder.pid} (since {holder.since}): the job ended (CANCELLED)") in result.stdout
    assert not locks.lock_path(out).exists()
    assert succeeded(run_invoke("data.verify", "--prefix", str(out))).stdout.startswith(f"ok {out}: 122 documents")


def _script(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("submitted job "))
    return Path(line.split(": ", 1)[1]).read_text()


def test_a_parallel_job_that_writes_no_document_fails_in_the_task_that_merges(tmp_path: Path,
                                                                              slurm_env: LocalSlurm) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(WIKI.read_bytes() * 8)
    out = tmp_path / "train"
    submitted = succeeded(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--submit", "--parallel",
                              "--tasks-per-node", "2", "--chunk-mb", "1", "--text-key", "content", output=out))
    (job_id,) = submitted_ids(submitted.stdout)
    waited = run_invoke("jobs.wait", "--job", job_id, "--interval", "0.2", timeout=300)
    assert waited.returncode != 0
    errors = run_invoke("jobs.logs", "--job", job_id, "--err").stdout
    assert f"error: {corpus}: no line has key 'content'; lines have: text (--text-key, data.text_key)" in errors
    assert not pre.parts_dir(out).exists()
    assert not indexed.bin_path(out).exists() and not indexed.idx_path(out).exists()
    # Once the job has ended, the fixed rerun takes its lock over and starts afresh.
    succeeded(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), output=out))
    assert succeeded(run_invoke("data.verify", "--prefix", str(out))).stdout.startswith(f"ok {out}: 976 documents")
