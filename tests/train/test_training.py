"""Real TorchTitan training of the tiny model on CPU from a dataset made by data.preprocess."""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.fixtures.slurm import LocalSlurm
from tests.helpers import SHARED_DATA, run_invoke, submitted_ids

pytestmark = pytest.mark.train

WIKI = SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"
STEP = re.compile(r"(?<!validate )step:\s*(\d+)\s+loss:\s*([0-9.naninf]+)")


def losses(text: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in STEP.findall(re.sub(r"\x1b\[[0-9;]*m", "", text))}


def ok(*args: str, timeout: float = 600):
    if args[0].startswith("train."):
        args = (*args, "--", "--metrics.log_freq", "1")
    result = run_invoke(*args, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "wiki"
    ok("data.preprocess", "--input", str(WIKI), "--output", str(out))
    return out


def test_one_process_trains_and_a_resumed_run_repeats_the_uninterrupted_one(dataset: Path) -> None:
    common = ["--dataset", str(dataset), "--steps", "10", "--checkpoint-interval", "5", "--batch-size", "2"]
    straight = ok("train.run", "--name", "straight", *common)
    seen = losses(straight.stdout + straight.stderr)
    assert sorted(seen) == list(range(1, 11))
    values = list(seen.values())
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3

    # Interrupted after step 5: only that checkpoint is left; a new run resumes from it.
    folder = next(Path.home().glob("trustllm/scratch/**/experiments/straight/checkpoint"))
    assert {p.name for p in folder.iterdir()} >= {"step-5", "step-10"}
    shutil.copytree(folder.parent, folder.parent.with_name("resumed"))
    shutil.rmtree(folder.parent.with_name("resumed") / "checkpoint" / "step-10")
    resumed = ok("train.run", "--name", "resumed", *common)
    again = losses(resumed.stdout + resumed.stderr)
    assert sorted(again) == list(range(6, 11)), "the resumed run starts after its checkpoint"
    for step in range(6, 11):
        assert again[step] == pytest.approx(seen[step], abs=1e-4)


def test_two_processes_with_gloo(dataset: Path) -> None:
    result = ok("train.run", "--name", "two", "--dataset", str(dataset), "--steps", "4", "--procs-per-node", "2",
                "--batch-size", "2")
    seen = losses(result.stdout + result.stderr)
    assert sorted(seen) == [1, 2, 3, 4] and all(math.isfinite(v) for v in seen.values())


@pytest.mark.slurm
@pytest.mark.parametrize(("launcher", "module"), [("torchrun", "torch.distributed.run"),
                                                  ("torchrun_jsc", "torchrun_jsc")])
def test_a_training_job_with_two_tasks_on_the_local_slurm(dataset: Path, slurm_env: LocalSlurm, launcher: str,
                                                          module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each launcher a machine profile can name (cluster.launcher), in a real job.
    monkeypatch.setenv("INVOKE_CLUSTER_LAUNCHER", launcher)
    dry = ok("train.submit", "--dataset", str(dataset), "--steps", "3", "--procs-per-node", "2", "--dry")
    assert "--nproc_per_node=2" in dry.stdout and "# torchtitan: torchtitan.train --module titanenv.train.registry" in dry.stdout
    assert f" -u -m {module} " in dry.stdout
    submitted = ok("train.submit", "--name", f"slurm-{launcher}", "--time", "00:10:00", "--dataset", str(dataset),
                   "--steps", "3", "--procs-per-node", "2", "--batch-size", "2", "--partition", "debug")
    (job_id,) = submitted_ids(submitted.stdout)
    waited = run_invoke("jobs.wait", "--job", job_id, "--interval", "0.5", timeout=600)
    log = run_invoke("jobs.logs", "--job", job_id, "--err").stdout + run_invoke("jobs.logs", "--job", job_id).stdout
    assert waited.returncode == 0, log[-4000:]
    assert sorted(losses(log)) == [1, 2, 3]
    _assert_what_ran_is_recorded(submitted.stdout, job_id, log)


def _assert_what_ran_is_recorded(submitted: str, job_id: str, log: str) -> None:
    """Rank 0 printed and kept versions, container, commits and TorchTitan's resolved configuration."""
    import json
    import platform

    import torch

    from titanenv.runs import read_record

    run_dir = Path(next(line for line in submitted.splitlines() if line.startswith("submitted job ")).split(": ", 1)[1]).parent
    record = read_record(run_dir / "run.json")
    assert record.data["container"] == {"runtime": "none"}
    ran = record.ran[job_id]
    assert ran["slurm_job_id"] == job_id and ran["world_size"] == 2
    assert ran["torch"]["version"] == torch.__version__ and ran["cpu_arch"] == platform.machine()
    assert ran["torchtitan"]["version"] == "0.3.0"
    assert ran["python"]["version"] == platform.python_version()
    assert ran["titanenv"]["commit"] == record.data["git"]["commit"]
    config = ran["torchtitan_config"]
    assert config["training"]["steps"] == 3 and config["training"]["local_batch_size"] == 2
    assert config["dump_folder"] == record.data["extra"]["train"]["dump_folder"]
    assert f"titanenv: torch {torch.__version__} (CUDA -, NCCL -, 0 GPU(s))" in log
    assert '"steps": 3' in next(line for line in log.splitlines() if "titanenv: config training:" in line)
    assert json.loads((run_dir / f"ran-{job_id}.json").read_text()) == ran


def _line_of_local(text: str) -> int:
    from tests.helpers import REPO_ROOT

    lines = (REPO_ROOT / "machines" / "local.yaml").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def _bad_toml(tmp_path: Path, name: str, old: str, new: str) -> Path:
    from tests.helpers import REPO_ROOT

    path = tmp_path / f"{name}.toml"
    text = (REPO_ROOT / "train_configs" / "debug_cpu.toml").read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_bad_input_fails_before_submission_in_one_line(dataset: Path, tmp_path: Path) -> None:
    cases = [
        (["--dataset", str(tmp_path / "missing")], "no such index file; run data.preprocess"),
        (["--dataset", str(dataset), "--config", str(_bad_toml(tmp_path, "small_vocab", "vocab_size = 50257", "vocab_size = 1000"))],
         "does not fit the model's vocabulary of 1,000"),
        (["--dataset", str(dataset), "--seq-len", "100000000"], "cannot fill one window of seq_len"),
        (["--dataset", str(dataset), "--config", str(_bad_toml(tmp_path, "unknown_key", "[metrics]", "[metrics]\nlog_fraq = 2"))],
         "TorchTitan does not know metrics.log_fraq"),
        (["--dataset", str(dataset), "--time", "00:00:30"],
         f"machines/local.yaml:{_line_of_local('stop_signal_lead:')}: cluster.stop_signal_lead: 30 s before the "
         "time limit leaves no time to train "
         "within --time 00:00:30"),
    ]
    for args, expected in cases:
        result = run_invoke("train.submit", *args, timeout=300)  # not ok(): must fail
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
        assert "submitted job" not in result.stdout


# A login node's task venv without torch: the blocker makes `import torch` fail
# in the invoke process only (BLOCK_TORCH=invoke) or everywhere (=all).
TORCH_BLOCKER = '''
import os, sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchtitan"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

where = os.environ.get("BLOCK_TORCH")
if where == "all" or (where == "invoke" and sys.orig_argv[1:3] == ["-m", "invoke"]):
    sys.meta_path.insert(0, _NoTorch())
'''


def test_without_torch_here_the_job_environment_checks_the_toml(dataset: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(TORCH_BLOCKER)
    bad = _bad_toml(tmp_path, "unknown_key", "[metrics]", "[metrics]\nlog_fraq = 2")
    args = ["train.submit", "--dataset", str(dataset), "--config", str(bad)]

    env = {"PYTHONPATH": str(blocker), "BLOCK_TORCH": "invoke"}
    result = run_invoke(*args, env=env, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0] == f"error: {bad}: TorchTitan does not know metrics.log_fraq (from the TOML's [metrics] section or a flag)"

    result = run_invoke(*args, env={**env, "BLOCK_TORCH": "all"}, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "cannot check it with TorchTitan: this Python" in lines[0] and "lacks torch" in lines[0], lines[0]
    assert "run env.setup there" in lines[0]


@pytest.mark.slurm
def test_a_resubmission_and_a_chain_go_on_from_the_latest_checkpoint(dataset: Path, slurm_env: LocalSlurm,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--name", "resubmitted", "--time", "00:10:00", "--dataset", str(dataset), "--batch-size", "2",
              "--partition", "debug", "--checkpoint-interval", "2"]

    def run_to_end(*args: str) -> list[str]:
        ids = submitted_ids(ok("train.submit", *common, *args).stdout)
        waited = run_invoke("jobs.wait", "--job", ",".join(ids), "--interval", "0.5", timeout=600)
        logs = [run_invoke("jobs.logs", "--job", i, "--err").stdout + run_invoke("jobs.logs", "--job", i).stdout
                for i in ids]
        assert waited.returncode == 0, "".join(logs)[-4000:]
        return logs

    (first,) = run_to_end("--steps", "4")
    assert sorted(losses(first)) == [1, 2, 3, 4]
    # Submitted again with more steps: it resumes at step 5. The second link of
    # the chain finds the run finished and starts after its last checkpoint.
    link1, link2 = run_to_end("--steps", "6", "--chain", "2")
    assert "Training starts at step 5" in link1 and sorted(losses(link1)) == [5, 6], link1[-3000:]
    # It ends at once: no model built, no checkpoint loaded.
    assert "training is done: checkpoint step-6 reaches training.steps = 6; nothing to train" in link2, link2[-3000:]
    assert "Training starts" not in link2 and losses(link2) == {}, link2[-3000:]
    assert all(math.isfinite(v) for v in losses(link1).values())


STOPPED = re.compile(r"checkpoint of step (\d+) on disk")


def _logs(job_id: str) -> str:
    return run_invoke("jobs.logs", "--job", job_id, "--err").stdout + run_invoke("jobs.logs", "--job", job_id).stdout


@pytest.mark.slurm
def test_a_chain_outlives_the_time_limit_link_by_link(dataset: Path, slurm_env: LocalSlurm,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # One-minute links (Slurm's shortest), a step count none can reach; USR1
    # comes 20-50 s before each limit (slurmctld looks every 30 s), which
    # leaves a loaded 2-core host time for a step, the save and the exit.
    monkeypatch.setenv("INVOKE_CLUSTER_STOP_SIGNAL_LEAD", "20")
    submitted = ok("train.submit", "--name", "outlives", "--time", "00:01:00", "--steps", "100000",
                   "--checkpoint-interval", "10", "--dataset", str(dataset), "--batch-size", "2",
                   "--partition", "debug", "--chain", "3")
    ids = submitted_ids(submitted.stdout)
    assert len(ids) == 3
    waited = run_invoke("jobs.wait", "--job", ",".join(ids), "--interval", "1", timeout=900)
    logs = [_logs(i) for i in ids]
    # Every link ended COMPLETED (afterok let the next one start), none TIMEOUT.
    assert waited.returncode == 0, waited.stdout + waited.stderr + logs[-1][-3000:]

    next_step, trained = 1, []
    for job_id, log in zip(ids, logs):
        assert "SIGUSR1: asking training to save a checkpoint and stop" in log, log[-3000:]
        assert f"Training starts at step {next_step}" in log, log[-3000:]
        steps = sorted(losses(log))
        # From where the last link stopped (at least one step) up to its own
        # checkpoint: nothing lost, nothing trained twice.
        assert steps and steps == list(range(next_step, steps[-1] + 1)), log[-3000:]
        assert [int(s) for s in STOPPED.findall(log)] == [steps[-1]], log[-3000:]
        next_step = steps[-1] + 1
        trained += steps
    assert len(trained) == len(set(trained))
    checkpoints = next(Path.home().glob("trustllm/scratch/**/experiments/outlives/checkpoint"))
    assert f"step-{trained[-1]}" in {p.name for p in checkpoints.iterdir()}

    runs = run_invoke("jobs.status", "--runs").stdout.splitlines()
    row = next(line for line in runs if line.startswith("train/"))
    assert row.split()[-2:] == [",".join(ids), "COMPLETED,COMPLETED,COMPLETED"], runs


@pytest.mark.slurm
def test_a_term_as_on_preemption_saves_and_ends_the_job_successfully(dataset: Path, slurm_env: LocalSlurm,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Two ranks: they agree on the stop over gloo and both write their part of the checkpoint.
    submitted = ok("train.submit", "--name", "preempted", "--time", "00:10:00", "--steps", "100000",
                   "--checkpoint-interval", "1000", "--dataset", str(dataset), "--batch-size", "2",
                   "--procs-per-node", "2", "--partition", "debug")
    (job_id,) = submitted_ids(submitted.stdout)
    out = Path(slurm_env.job(job_id).fields["StdOut"])
    while not losses(out.read_text() if out.exists() else ""):
        assert not slurm_env.job(job_id).ended, _logs(job_id)[-3000:]
        time.sleep(0.5)
    # What a preempting Slurm does first: TERM to every process of the job's steps.
    slurm_env.run(["scancel", "--signal=TERM", job_id])
    info = slurm_env.wait(job_id, timeout=300)
    log = _logs(job_id)
    assert (info.state, info.exit_code) == ("COMPLETED", 0), log[-3000:]
    steps = sorted(losses(log))
    assert log.count("stop requested (SIGTERM)") == 2, log[-3000:]
    assert steps == list(range(1, steps[-1] + 1)), log[-3000:]
    # Both ranks stopped after the same step, and logged it.
    assert [int(s) for s in STOPPED.findall(log)] == [steps[-1]] * 2, log[-3000:]


def test_two_runs_of_one_experiment_never_write_at_once(dataset: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tests.helpers import REPO_ROOT
    from titanenv import locks

    first = subprocess.Popen(
        [sys.executable, "-m", "invoke", "train.run", "--name", "busy", "--dataset", str(dataset), "--steps", "100000",
         "--batch-size", "2"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (found := list(Path.home().glob("trustllm/scratch/**/experiments/busy.lock"))):
            assert first.poll() is None and time.monotonic() < deadline, "the first run must take the lock"
            time.sleep(0.1)
        folder = found[0].with_suffix("")
        since = locks.read_holder(found[0]).since
        expected = (f"error: {folder} is being written by host {socket.gethostname()} pid {first.pid} (since {since}, "
                    f"train.run); wait for it, use another --name or stop it (kill {first.pid})")
        for task in ("train.run", "train.submit"):
            refused = run_invoke(task, "--name", "busy", "--dataset", str(dataset), "--steps", "2", timeout=300)
            assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [expected], refused.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # gone without releasing its lock
        first.wait()
    again = ok("train.run", "--name", "busy", "--dataset", str(dataset), "--steps", "2", "--batch-size", "2")
    assert (f"note: took over the lock of {folder} from host {socket.gethostname()} pid {first.pid} (since {since}): "
            f"process {first.pid} no longer exists") in again.stdout
    assert not found[0].exists()


@pytest.mark.slurm
def test_a_second_submission_of_a_queued_experiment_is_refused_unless_it_follows(dataset: Path,
                                                                                slurm_env: LocalSlurm) -> None:
    blocker = slurm_env.run(["sbatch", "--parsable", "--hold", "--output=/dev/null", "--wrap", "true"]).stdout.strip()
    common = ["--name", "queued", "--time", "00:10:00", "--dataset", str(dataset), "--steps", "2", "--batch-size", "2",
              "--partition", "debug"]
    first = ok("train.submit", *common, "--dependency", blocker)
    (job_a,) = submitted_ids(first.stdout)
    folder = next(line for line in first.stdout.splitlines() if line.startswith("checkpoints: "))
    folder = folder.split(": ", 1)[1].split(" (", 1)[0].removesuffix("/checkpoint")

    refused = run_invoke("train.submit", *common, timeout=300)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"error: {folder} is being written by Slurm job(s) {job_a} of this experiment (queued or running); add "
        f"--dependency {job_a} to start after them, cancel them (invoke jobs.cancel --job {job_a}) or use another --name"
    ], refused.stderr
    here = run_invoke("train.run", *common[:2], "--dataset", str(dataset), "--steps", "2", timeout=300)
    assert here.returncode == 1 and f"error: {folder} is being written by Slurm job(s) {job_a}" in here.stderr

    # Meant to follow: accepted; the next one must follow the newest.
    (job_b,) = submitted_ids(ok("train.submit", *common, "--dependency", job_a).stdout)
    refused = run_invoke("train.submit", *common, "--dependency", job_a, timeout=300)
    assert refused.returncode == 1
    assert f"Slurm job(s) {job_a}, {job_b} of this experiment (queued or running); add --dependency {job_b} " \
           in refused.stderr
