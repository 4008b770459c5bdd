"""What the submission layer adds to Slurm's own cost, per job.

Against a local Slurm cluster that this script starts and stops (the test
suite's, from tests/fixtures/slurm.py), in one run, alternating:

- A: render the ``local`` machine's preprocess sbatch script and submit it
  through ``titanenv.slurm.submit`` (run directory, script file, sbatch
  --parsable, run record with git state);
- B: a bare ``sbatch --parsable --wrap true``.

Both go to the same partition, which is set DOWN first: jobs are accepted
and stay pending, so the figures are submission alone, not 100 jobs running
on two cores at the same time. The configuration is loaded once, as in one
task invocation. The figure is the ratio of median per-job times
(target <= 1.5).

    .venv/bin/python bench/submit_speed.py [--jobs 50]
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

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.slurm import LocalSlurm, missing_binaries  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs of each kind (after 3 warm-up ones)")
    args = parser.parse_args()
    missing = missing_binaries()
    if missing:
        raise SystemExit(f"needs the Debian packages {', '.join(missing)}")

    with tempfile.TemporaryDirectory(prefix="titanenv-bench-") as home:
        # Runs go under ~/trustllm/scratch of a throw-away home; no user config applies.
        os.environ["HOME"] = home
        with LocalSlurm.start() as cluster:
            os.environ.update(cluster.env)
            cluster.run(["scontrol", "update", "PartitionName=devel", "State=DOWN"])

            from titanenv import sbatch
            from titanenv.config import load_config
            from titanenv.runs import new_run
            from titanenv.slurm import submit

            config = load_config(REPO_ROOT)
            assert config.machine == "local", config.machine

            def layer() -> float:
                start = time.perf_counter()
                run = new_run(config, "bench")
                script = sbatch.preprocess_script(config, run_dir=run.path, command=["true"])
                submission = submit(config, run, script, echo=lambda line: None)
                elapsed = time.perf_counter() - start
                assert len(submission.job_ids) == 1
                return elapsed

            def bare() -> float:
                start = time.perf_counter()
                result = subprocess.run(
                    ["sbatch", "--parsable", "--output=/dev/null", "--wrap", "true"],
                    capture_output=True, text=True,
                )
                elapsed = time.perf_counter() - start
                if result.returncode != 0 or not result.stdout.strip():
                    raise SystemExit(f"sbatch failed: {result.stderr.strip()}")
                return elapsed

            for _ in range(3):
                layer(), bare()
            ours, baseline = [], []
            for _ in range(args.jobs):
                ours.append(layer())
                baseline.append(bare())
            queued = len(cluster.job_ids())

    ms = lambda values: [v * 1000 for v in values]  # noqa: E731
    ratios = [a / b for a, b in zip(ours, baseline)]
    print(f"{args.jobs} jobs of each, alternated; {queued} jobs were queued (all pending, partition DOWN)")
    print(f"{'per job (ms)':<38}{'median':>9}{'mean':>9}{'min':>9}{'max':>9}")
    for label, values in (("render + submit through the layer", ours), ("bare sbatch --wrap true", baseline)):
        v = ms(values)
        print(f"{label:<38}{statistics.median(v):>9.1f}{statistics.mean(v):>9.1f}{min(v):>9.1f}{max(v):>9.1f}")
    print(f"{'ratio layer/bare (pairs)':<38}{statistics.median(ratios):>9.2f}{statistics.mean(ratios):>9.2f}"
          f"{min(ratios):>9.2f}{max(ratios):>9.2f}")
    median_ratio = statistics.median(ours) / statistics.median(baseline)
    print(f"ratio of medians: {median_ratio:.2f} (target <= 1.5); of totals: {sum(ours) / sum(baseline):.2f}")


if __name__ == "__main__":
    main()
