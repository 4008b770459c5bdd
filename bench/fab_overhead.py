"""Per-task overhead of `fab -H HOST TASK` against a plain `ssh HOST true` (target <= 2x).

Starts the test suite's loopback sshd (tests/fixtures/sshd.py), bootstraps a
checkout there with `fab -H titan-login remote.bootstrap`, then times, as
whole processes, alternated, in one run:

  ssh      ssh -F CFG titan-login true                        (OpenSSH's floor)
  by hand  ssh -F CFG titan-login 'cd CHECKOUT && .venv/bin/invoke TASK'
  fab      fab -H titan-login TASK
  fab xN   fab -H titan-login TASK TASK ... (N times; one connection, one remote invoke)

TASK is `config.machines` (cheap, so the figures are mostly overhead). The
task's own work on the host is `by hand - ssh`; what fab adds for running a
task is `fab - (by hand - ssh)`, which the target compares with `ssh`. The
per-task cost within one fab command (`fab xN / N`) is printed as well.

    .venv/bin/python bench/fab_overhead.py [--runs 10] [--chain 5]
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

from tests.fixtures.sshd import running_sshd, sshd_available, write_laptop_config  # noqa: E402

TASK = "config.machines"


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {result.returncode}: {(result.stderr or result.stdout).strip()[-500:]}")
    return elapsed


def row(name: str, values: list[float]) -> str:
    return f"{name:<40}{statistics.median(values):>9.3f}{min(values):>9.3f}{max(values):>9.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed rounds (after one warm-up)")
    parser.add_argument("--chain", type=int, default=5, help="tasks in the multi-task fab command")
    args = parser.parse_args()
    if not sshd_available():
        raise SystemExit("needs the Debian packages openssh-server and openssh-client")
    fab = [sys.executable, "-m", "fabric"]
    with running_sshd() as server, tempfile.TemporaryDirectory(prefix="titanenv-bench-home-") as home:
        env = {**os.environ, "HOME": home}
        env = {k: v for k, v in env.items() if not k.startswith("INVOKE_")}
        checkout = server.root / "project" / "titanenv"
        write_laptop_config(Path(home), server, checkout)
        print(f"bootstrapping {checkout} on the loopback sshd ...", file=sys.stderr)
        wall([*fab, "-H", "titan-login", "remote.bootstrap"], env)
        ssh = ["ssh", "-F", str(server.ssh_config), "-o", "BatchMode=yes", "titan-login"]
        commands = {
            "ssh": [*ssh, "true"],
            "by hand": [*ssh, f"cd {checkout} && .venv/bin/invoke {TASK}"],
            "fab": [*fab, "-H", "titan-login", TASK],
            "fab xN": [*fab, "-H", "titan-login", *[TASK] * args.chain],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for name, argv in commands.items():  # warm-up
            wall(argv, env)
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(wall(argv, env))
    ssh_t, hand, fab_t, chain = (times[n] for n in ("ssh", "by hand", "fab", "fab xN"))
    task_work = [h - s for h, s in zip(hand, ssh_t)]
    fab_overhead = [f - w for f, w in zip(fab_t, task_work)]
    per_task = [c / args.chain for c in chain]
    print(f"{'figure (s)':<40}{'median':>9}{'min':>9}{'max':>9}")
    print(row("ssh titan-login true", ssh_t))
    print(row(f"ssh titan-login 'invoke {TASK}'", hand))
    print(row(f"fab -H titan-login {TASK}", fab_t))
    print(row(f"fab -H titan-login {TASK} x{args.chain}", chain))
    print(row("task's own work there (by hand - ssh)", task_work))
    print(row("fab overhead per task (fab - work)", fab_overhead))
    print(row(f"fab per task within x{args.chain}", per_task))
    ratios = [o / s for o, s in zip(fab_overhead, ssh_t)]
    print(f"{'ratio fab overhead / ssh true':<40}{statistics.median(ratios):>9.2f}{min(ratios):>9.2f}{max(ratios):>9.2f}  (target <= 2)")
    chained = [p / s for p, s in zip(per_task, ssh_t)]
    print(f"{f'ratio fab per task (x{args.chain}) / ssh true':<40}{statistics.median(chained):>9.2f}{min(chained):>9.2f}{max(chained):>9.2f}")
    whole = [f / h for f, h in zip(fab_t, hand)]
    print(f"{'ratio fab / by hand (same task)':<40}{statistics.median(whole):>9.2f}{min(whole):>9.2f}{max(whole):>9.2f}")


if __name__ == "__main__":
    main()
