"""Tokenize JSONL, Parquet or Arrow into a Megatron-LM indexed dataset, chunk by chunk, resumably.

A run has three steps, each usable on its own so a Slurm job can spread them,
each in a module of its own:

1. :mod:`~titanenv.data.plan`: :func:`prepare` checks the inputs and the
   tokenizer, refuses an existing output without ``overwrite``, cuts the
   inputs into chunks and writes the plan to ``PREFIX.parts/plan.json`` (or
   reuses the plan of an unfinished run with the same inputs and settings,
   so a rerun only does what is missing).
2. :mod:`~titanenv.data.work`: :func:`work` tokenizes the chunks of one rank
   (``rank`` of ``ranks``; ranks get similar byte counts) with N worker
   processes (:mod:`~titanenv.data.pool`), each chunk into a numbered pair
   and a ``.done`` marker. As soon as every chunk before one is done, its
   offset in the output is known and its tokens are copied into the merged
   file while the other chunks are still being tokenized.
3. :mod:`~titanenv.data.merge`: :func:`merge` copies what is left, writes
   ``PREFIX.idx`` from the chunks' indexes, renames both into place (the
   index last), writes ``PREFIX.summary.json`` and removes the parts. In a
   Slurm job the rank that finishes last merges (:func:`finish_rank`).

Progress (:mod:`~titanenv.data.progress`) is a bar on a terminal, log lines
otherwise. This module is what callers use: the steps, and what a whole
run needs around them (the output's lock, signals, Slurm's rank).

The result is byte-identical to Megatron-LM's ``tools/preprocess_data.py
--append-eod`` (one sequence per document) whatever the number of chunks,
workers or ranks, and whether or not the run was interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Callable

# numpy before the steps' modules: imported one level deeper, numpy._typing's import ran at a
# call depth where CPython 3.11 frees and maps a 16 KiB frame-stack chunk on every call
# (3,600 mmap/munmap pairs, +70 ms on every data.preprocess; strace -c showed it).
import numpy  # noqa: F401

from titanenv.data import indexed
from titanenv.data.merge import Summary, finish_rank, merge, rejection
from titanenv.data.plan import (
    MAX_SKIPPED_FRACTION,
    MERGED_NAME,
    PLAN_NAME,
    ChunkStats,
    Plan,
    PreprocessError,
    Settings,
    copied_path,
    file_system_error,
    interrupted,
    parts_dir,
    prepare,
    summary_path,
)
from titanenv.data.progress import Progress
from titanenv.data.tokenizer import TextTokenizer
from titanenv.data.work import WorkResult, cpus_available, tokenize_chunk, work


def lock_output(output: Path, *, token: str = "", job: str = "", echo: Callable[[str], None] = print):
    """The lock on the dataset prefix (``PREFIX.lock``): one writer per output at a time.

    The tasks of one Slurm job share it through its ``token`` (see
    :mod:`titanenv.locks`); anyone else is refused in one line naming the
    holder, and a holder that is gone is taken over, saying so.
    """
    from titanenv import locks

    return locks.acquire(Path(output), what="data.preprocess", token=token, job=job,
                         instead="choose another --output", echo=echo)


@contextlib.contextmanager
def interruptible():
    """SIGTERM (Slurm's cancel and time limit, ``kill``) stops like Ctrl-C: KeyboardInterrupt, then clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(plan: Plan, *, workers: int = 0, progress: Progress | None = None,
        tok: TextTokenizer | None = None) -> Summary:
    """Every chunk here (rank 0 of 1), then merge: the whole job in one process tree."""
    result = work(plan, workers=workers, progress=progress, tok=tok)
    return merge(plan, result=result if result.chunks_done else None)


def slurm_rank() -> tuple[int, int]:
    """This task's rank and the number of ranks from Slurm (0 of 1 outside a job)."""
    def number(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() else default

    return number("SLURM_PROCID", 0), number("SLURM_NTASKS", 1)


def slurm_job() -> str:
    """This Slurm job's id (its array task's too), or ``here`` outside a job."""
    job = os.environ.get("SLURM_JOB_ID", "")
    return f"{job}.{os.environ['SLURM_ARRAY_TASK_ID']}" if job and "SLURM_ARRAY_TASK_ID" in os.environ else job or "here"


__all__ = [
    "MAX_SKIPPED_FRACTION", "MERGED_NAME", "PLAN_NAME", "ChunkStats", "Plan", "PreprocessError", "Progress",
    "Settings", "Summary", "WorkResult", "copied_path", "cpus_available", "file_system_error", "finish_rank",
    "indexed", "interrupted", "interruptible", "lock_output", "merge", "parts_dir", "prepare", "rejection", "run",
    "slurm_job", "slurm_rank", "summary_path", "tokenize_chunk", "work",
]
