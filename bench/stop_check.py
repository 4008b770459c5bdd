"""What the per-step stop check costs (titanenv.train.stop.Agreement), on CPU.

Starts ``--procs`` processes with torch.distributed.run (gloo, this host),
builds the Agreement as the trainer does and times ``--checks`` calls of
``reached()`` (one int32 all-reduce over the gloo group, plus the local
signal flag and marker look-up), after a warm-up. Prints the median and 99th
percentile per call in microseconds, from rank 0. Compare with a CPU step of
the tiny model (``invoke train.run`` logs about 0.1-0.2 s per step on two
cores): the target is under 0.1 % of a step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def worker(checks: int) -> None:
    import torch.distributed as dist

    from titanenv.train import stop

    dist.init_process_group("gloo")
    agreement = stop.Agreement()
    for _ in range(100):
        agreement.reached()
    times = []
    for _ in range(checks):
        began = time.perf_counter()
        agreement.reached()
        times.append(time.perf_counter() - began)
    if dist.get_rank() == 0:
        times.sort()
        print(f"{dist.get_world_size()} processes, {checks} checks: median {statistics.median(times) * 1e6:.0f} us, "
              f"p99 {times[int(len(times) * 0.99)] * 1e6:.0f} us per step")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2, help="processes (ranks)")
    parser.add_argument("--checks", type=int, default=2000, help="timed checks per rank")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.checks)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
                    __file__, "--worker", "--checks", str(args.checks)], check=True, env=env)


if __name__ == "__main__":
    main()
