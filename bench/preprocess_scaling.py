"""data.preprocess --parallel as a Slurm job: 2 tasks against 1 task on the same large input.

Starts the test suite's local Slurm (tests/fixtures/slurm.py: two nodes on
this host) and submits ``invoke data.preprocess --submit --parallel`` on a
--times repeated copy of the shared OpenWebText sample (800x: 3.6 GB, 844 M
GPT-2 tokens; large, so that the job's fixed second or so of start-up is
small beside the work), alternating:

- A: one task (``--tasks-per-node 1``);
- B: two tasks (``--tasks-per-node 2``) on the same node.

Each task runs one worker process (``--workers 1``), so a task is one
core's worth, as a task is a node's worth on a cluster; this host has two
cores, so B can at best halve A's tokenizing. Wall time runs from the job's
start to its end as seen by polling ``scontrol show job`` every half a
second (more often, the polling itself slows the tasks down on two cores),
and includes each task's start-up and the merge by the task that finishes
last. Target: B / A <= 0.6.

    .venv/bin/python bench/preprocess_scaling.py [--times 800] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from titanenv.sample_data import materialize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.slurm import LocalSlurm, missing_binaries  # noqa: E402

# The repository's sample corpus and tokenizer as plain files (sample_data/README.md).
SHARED = materialize(ROOT / "bench" / "out" / "sample-data")
CORPUS = SHARED / "corpus" / "openwebtext_1000.jsonl"
TOKENIZER = SHARED / "tokenizers" / "gpt2"
WORK = ROOT / ".work" / "bench-scaling"
POLL_SECONDS = 0.5


def submit(big: Path, out: Path, tasks: int) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "data.preprocess", "--submit", "--parallel", "--input", str(big),
         "--tokenizer", str(TOKENIZER), "--output", str(out), "--overwrite", "--workers", "1",
         "--tasks-per-node", str(tasks), "--partition", "debug", "--time", "00:30:00"],
        cwd=ROOT, capture_output=True, text=True,
    )
    if done.returncode:
        sys.exit(f"submission failed:\n{done.stdout}{done.stderr}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("submitted job ")]
    return line.split()[2].rstrip(":")


def job_fields(cluster: LocalSlurm, job_id: str) -> dict[str, str]:
    text = cluster.run(["scontrol", "show", "job", "--oneliner", job_id]).stdout
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


def wait(cluster: LocalSlurm, job_id: str) -> float:
    """Seconds from the job's start to its end, seen by polling Slurm twice a second; exits if it failed."""
    started = None
    while True:
        state = job_fields(cluster, job_id)["JobState"]
        if state == "RUNNING" and started is None:
            started = time.perf_counter()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        time.sleep(POLL_SECONDS)
    ended = time.perf_counter()
    if state != "COMPLETED":
        sys.exit(f"job {job_id} ended {state}; see its log under {WORK}")
    if started is None:
        sys.exit(f"job {job_id} ended before it was seen running; use a larger --times")
    return ended - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=800, help="copies of the shared sample in the input (800: 3.6 GB)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    missing = missing_binaries()
    if missing:
        raise SystemExit(f"needs the Debian packages {', '.join(missing)}")
    WORK.mkdir(parents=True, exist_ok=True)
    big = WORK / f"owt_{args.times}x.jsonl"
    if not big.exists():
        sample = CORPUS.read_bytes()
        with open(big, "wb") as handle:
            for _ in range(args.times):
                handle.write(sample)

    with tempfile.TemporaryDirectory(prefix="titanenv-bench-", dir=WORK) as home:
        os.environ["HOME"] = home  # runs under a throw-away home; no user config applies
        with LocalSlurm.start() as cluster:
            os.environ.update(cluster.env)
            seconds: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.repeat):
                for tasks in (1, 2):
                    out = Path(home) / f"tasks{tasks}" / "train"
                    seconds[tasks].append(wait(cluster, submit(big, out, tasks)))
                    log = "".join(p.read_text() for p in Path(home).rglob("preprocess*-*.out"))
                    print(f"  {tasks} task(s): {seconds[tasks][-1]:.2f} s", flush=True)
                    print("    " + "\n    ".join(log.strip().splitlines()[-6:]), flush=True)
                    for old in Path(home).rglob("preprocess*-*.out"):
                        old.unlink()
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    print(f"{big.stat().st_size / 2**20:.0f} MiB input, medians of {args.repeat}: 1 task {one:.2f} s, 2 tasks {two:.2f} s")
    print(f"ratio 2 tasks / 1 task: {two / one:.2f} (target <= 0.6)")


if __name__ == "__main__":
    main()
