"""Stop training on request: a checkpoint at the next step boundary, then a clean exit.

How a request arrives (the shell side is ``sbatch_templates/train.sbatch.j2``):

- Slurm sends USR1 to the batch shell ``cluster.stop_signal_lead`` seconds
  before the time limit (``#SBATCH --signal=B:USR1@N``); a preempting site
  sends TERM to every process of the job. The shell's trap writes the marker
  file named by ``$TITANENV_STOP_FILE`` and passes the signal to srun, which
  passes it to every process of the job step.
- The launcher ignores both (:func:`titanenv.launch.stop_guard`), and so do
  its workers until :func:`install` gives them a handler that only notes the
  request. A worker still importing torch when the signal came ignored it;
  the marker tells it instead (it is looked at about once a second).
- At every step boundary after the job's first step the ranks agree (:class:`Agreement`, one integer
  all-reduced over a CPU/gloo group, so no GPU sync): if any rank saw a
  request, all save a full checkpoint (:func:`save_for_resume`) and leave
  the training loop, the process exits 0, the job ends COMPLETED and the next
  link of a chain (``afterok``) starts and resumes from it.

Nothing here imports torch at module level: :func:`install` runs before the
worker imports anything heavy.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# The signals that ask training to stop: Slurm's warning ahead of the time
# limit (USR1, asked for with --signal) and a preemption's or scancel's TERM.
SIGNALS = ("USR1", "TERM")
# Where the batch shell's trap leaves its marker (set by the training script).
STOP_FILE_VARIABLE = "TITANENV_STOP_FILE"
# The signals torchrun's agent keeps its own handlers for (``--signals-to-handle``):
# not TERM, which the workers answer with a checkpoint.
AGENT_SIGNALS_TO_HANDLE = "SIGINT,SIGHUP,SIGQUIT"
# Seconds between looks at the marker file (a stat on a parallel file system).
MARKER_INTERVAL = 1.0

_signalled: str | None = None
_marker_seen: str | None = None
_marker_checked = 0.0


def install() -> None:
    """Note the stop signals instead of dying of them; call first thing in a worker."""
    for name in SIGNALS:
        signal.signal(getattr(signal, f"SIG{name}"), _note)


def _note(signum: int, frame: Any) -> None:
    global _signalled
    if _signalled is None:
        _signalled = signal.Signals(signum).name


def marker() -> Path | None:
    """The marker file of this job, if the training script named one."""
    value = os.environ.get(STOP_FILE_VARIABLE, "")
    return Path(value) if value else None


def requested() -> str | None:
    """Why this process should stop (a signal's name or the marker file), or None."""
    global _marker_seen, _marker_checked
    if _signalled is not None:
        return _signalled
    if _marker_seen is None:
        now = time.monotonic()
        if now - _marker_checked >= MARKER_INTERVAL:
            _marker_checked = now
            path = marker()
            if path is not None and path.exists():
                _marker_seen = f"marker {path}"
    return _marker_seen


class Agreement:
    """Whether any rank was asked to stop, decided together at a step boundary.

    One int32 all-reduced (MAX) over a gloo group of all ranks: about 0.1 ms
    per step between two processes on CPU (bench/stop_check.py), and no GPU
    synchronisation on GPU runs. A single process decides alone. Build it on every rank, in the same order as other
    groups (``new_group`` is collective).
    """

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self._dist = dist
        self._group = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._group = dist.new_group(backend="gloo")
        self._flag = torch.zeros(1, dtype=torch.int32)
        self._told: str | None = None

    def reached(self) -> bool:
        """True on every rank once any rank has a stop request."""
        why = requested()
        if why is not None and self._told is None:
            self._told = why
            log(f"stop requested ({why}); stopping at the next step boundary")
        if self._group is None:
            return why is not None
        self._flag.fill_(0 if why is None else 1)
        self._dist.all_reduce(self._flag, op=self._dist.ReduceOp.MAX, group=self._group)
        return bool(self._flag.item())


def save_for_resume(checkpointer: Any, step: int) -> None:
    """A full, resumable checkpoint of ``step`` on disk before this returns.

    Full even where the recipe saves only the model at its last step
    (``last_save_model_only``, ``last_save_in_hf``), written synchronously
    after any asynchronous save still in flight; a step the interval already
    saved is only waited for.
    """
    if not getattr(checkpointer, "enable", False) or getattr(checkpointer, "load_only", False):
        log(f"checkpointing is off: nothing saved at step {step}; a next job starts from the last checkpoint")
        return
    began = time.monotonic()
    already = step % checkpointer.interval == 0 or (step == 1 and checkpointer.enable_first_step_checkpoint)
    if already:
        checkpointer.maybe_wait_for_staging()
        checkpointer.maybe_wait_for_saving()
    else:
        model_only, in_hf = checkpointer.last_save_model_only, checkpointer.last_save_in_hf
        checkpointer.last_save_model_only = checkpointer.last_save_in_hf = False
        try:
            # The last-step path: synchronous, after waiting for an async save in flight.
            checkpointer.save(step, last_step=True)
        finally:
            checkpointer.last_save_model_only, checkpointer.last_save_in_hf = model_only, in_hf
    log(f"checkpoint of step {step} on disk ({time.monotonic() - began:.1f} s); stopping, a next job resumes "
         f"at step {step + 1}")


def log(message: str) -> None:
    from torchtitan.tools.logging import logger

    logger.info(f"[titanenv] {message}")
    sys.stderr.flush()
