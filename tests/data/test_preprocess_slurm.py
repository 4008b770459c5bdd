"""data.preprocess submitted to the test suite's real Slurm: one task, and --parallel over two."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.test_preprocess import GPT2, OWT, ok, pair_bytes, preprocess
from tests.fixtures.slurm import LocalSlurm
from tests.helpers import run_invoke
from tests.slurm.conftest import submitted_ids
from titanenv.data import preprocess as pre

pytestmark = pytest.mark.slurm


def test_parallel_job_over_two_tasks_matches_the_local_run(tmp_path: Path, slurm_env: LocalSlurm) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(OWT.read_bytes() * 2)
    local = tmp_path / "local" / "train"
    ok(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), output=local))

    out = tmp_path / "slurm" / "train"
    submitted = ok(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--submit", "--parallel",
                              "--tasks-per-node", "2", "--chunk-mb", "1", "--partition", "debug", output=out))
    (job_id,) = submitted_ids(submitted.stdout)
    waited = run_invoke("jobs.wait", "--job", job_id, "--interval", "0.2", timeout=300)
    logs = run_invoke("jobs.logs", "--job", job_id).stdout
    assert waited.returncode == 0, waited.stdout + waited.stderr + logs
    assert "rank 0 of 2:" in logs and "rank 1 of 2:" in logs
    assert pair_bytes(out) == pair_bytes(local)
    assert not pre.parts_dir(out).exists()


def test_single_job_and_dry_submission(tmp_path: Path, slurm_env: LocalSlurm) -> None:
    out = tmp_path / "train"
    dry = ok(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--submit", "--dry", output=out))
    assert "-m titanenv.data run" in dry.stdout and "# would run: sbatch --parsable" in dry.stdout
    assert not pre.parts_dir(out).exists() and slurm_env.job_ids() == []

    submitted = ok(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--submit", output=out))
    (job_id,) = submitted_ids(submitted.stdout)
    waited = run_invoke("jobs.wait", "--job", job_id, "--interval", "0.2", timeout=300)
    assert waited.returncode == 0, waited.stdout + run_invoke("jobs.logs", "--job", job_id, "--err").stdout
    assert "1,000 documents" in run_invoke("jobs.logs", "--job", job_id).stdout
    assert ok(run_invoke("data.verify", "--prefix", str(out))).stdout.startswith(f"ok {out}: 1,000 documents")
