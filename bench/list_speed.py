"""How much slower `invoke --list` is for this project than for an empty collection.

Both run as whole processes, alternated, several times in one run; the ratio
of medians is the figure (target <= 1.3). Loading the task tree must not pay
for torch, tokenizers or datasets.

    .venv/bin/python bench/list_speed.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def wall(argv: list[str], cwd: Path, expect: int = 0) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != expect:
        raise SystemExit(f"{' '.join(argv)} in {cwd}: exit {result.returncode}: {result.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each (after one warm-up)")
    args = parser.parse_args()
    invoke = [sys.executable, "-m", "invoke", "--list"]
    with tempfile.TemporaryDirectory() as empty:
        empty_dir = Path(empty)
        (empty_dir / "tasks.py").write_text("from invoke import Collection\n\nns = Collection()\n")
        # Invoke exits 1 on an empty collection ("No tasks found") after doing the same loading.
        wall(invoke, REPO_ROOT), wall(invoke, empty_dir, expect=1)
        ours, baseline = [], []
        for _ in range(args.runs):
            ours.append(wall(invoke, REPO_ROOT))
            baseline.append(wall(invoke, empty_dir, expect=1))
    ratios = [a / b for a, b in zip(ours, baseline)]
    print(f"{'figure':<34}{'median':>10}{'min':>10}{'max':>10}")
    print(f"{'invoke --list, this project (s)':<34}{statistics.median(ours):>10.3f}{min(ours):>10.3f}{max(ours):>10.3f}")
    print(f"{'invoke --list, empty (s)':<34}{statistics.median(baseline):>10.3f}{min(baseline):>10.3f}{max(baseline):>10.3f}")
    print(f"{'ratio project/empty':<34}{statistics.median(ratios):>10.2f}{min(ratios):>10.2f}{max(ratios):>10.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
