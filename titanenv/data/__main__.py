"""Job steps of data.preprocess: ``python -m titanenv.data {run,work,merge} PARTS_DIR``.

The submitting task writes the plan (``PARTS_DIR/plan.json``: inputs,
tokenizer, chunks, output) on the login node; the job only carries it out,
so its command line holds nothing to quote but one path.

- ``run``: every chunk with one worker process per CPU, then the merge.
- ``work``: this Slurm task's share of the chunks (``SLURM_PROCID`` of
  ``SLURM_NTASKS``), one worker process per CPU of the task, each chunk
  copied into the merged file once its offset is known; the task that
  finishes last merges.
- ``merge``: copy what is left, write the index, put the output in place
  (by hand, after a job that stopped before its last task merged).

The output's lock (``PREFIX.lock``): the submitting task takes it and hands
it to the job; every task of the job joins it with ``--lock-token`` (so
they never lock each other out) and the one that completes the output
releases it. A job that fails keeps it until Slurm reports the job ended;
then the next run takes it over. Run by hand, without a token, a step takes
the lock itself and always releases it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from titanenv.errors import TitanEnvError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m titanenv.data", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("run", "work", "merge"))
    parser.add_argument("parts", type=Path, help="the run's PREFIX.parts directory")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default: one per CPU)")
    parser.add_argument("--progress-interval", type=float, default=30.0, help="seconds between log lines")
    parser.add_argument("--lock-token", default="",
                        help="share the output's lock the submitting task took for this job (its tasks all pass it)")
    args = parser.parse_args(argv)

    from titanenv.data import preprocess

    try:
        with preprocess.interruptible():
            _step(args, preprocess)
    except TitanEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {preprocess.file_system_error(exc, args.parts)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: {preprocess.interrupted(args.parts)}", file=sys.stderr)
        return 1
    return 0


def _step(args: argparse.Namespace, preprocess) -> None:
    plan = preprocess.Plan.read(args.parts / preprocess.PLAN_NAME)
    progress = preprocess.Progress(interval=args.progress_interval)
    # In a job, every task joins the lock the submission took (its token); by hand, the step takes its own.
    job = preprocess.slurm_job() if args.lock_token else ""
    lock = preprocess.lock_output(Path(plan.settings.output), token=args.lock_token, job=job if job != "here" else "")
    summary = None
    try:
        if args.step == "run":
            summary = preprocess.run(plan, workers=args.workers, progress=progress)
            print("\n".join(summary.lines()), flush=True)
        elif args.step == "work":
            rank, ranks = preprocess.slurm_rank()
            result = preprocess.work(plan, rank=rank, ranks=ranks, workers=args.workers, progress=progress)
            print(
                f"rank {rank} of {ranks}: {result.chunks_done} chunk(s) tokenized, "
                f"{result.chunks_skipped} done earlier; {result.stats.documents:,} documents, "
                f"{result.stats.tokens:,} tokens in {result.seconds:.2f} s",
                flush=True,
            )
            summary = preprocess.finish_rank(plan, result, rank=rank, ranks=ranks, job=preprocess.slurm_job())
            if summary is not None:
                print(f"rank {rank} of {ranks} finished last and merged:", flush=True)
                print("\n".join(summary.lines()), flush=True)
        else:
            summary = preprocess.merge(plan)
            print("\n".join(summary.lines()), flush=True)
    finally:
        # A job's lock stays with the job until the output is complete: its other
        # tasks still work, and once the job has ended a rerun takes it over.
        if summary is not None or not args.lock_token:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
