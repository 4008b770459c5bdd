"""Forked worker processes, each talking to the parent over a pipe of its own.

Why not :class:`multiprocessing.Pool`: its workers share one task queue and
one result queue, each guarded by a lock between processes. SIGTERM reaches
every process of the group (``kill`` of the group, Slurm's cancel and time
limit), and a worker it ends while it holds one of those locks leaves the
pool's shutdown waiting for that lock forever: seen in CI, the parent
blocked in ``Pool.terminate`` on the result queue's lock of a worker that
was gone. No worker can tell whether it holds such a lock when the signal
comes. Here the workers share nothing but memory the caller sets up: each
has its own pipe, a worker may end at any moment and the parent notices
(end of file on the pipe, the process's sentinel), and stopping is SIGTERM,
a grace period, then SIGKILL.

Workers are forked, so they inherit what the parent has loaded (a
tokenizer) instead of loading it again; ``recycle_after`` replaces a worker
by a fresh fork once it has done that much work (``weight`` of its items),
which bounds caches that only grow.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable, Generic, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Seconds a stopped worker has to clean up after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 10.0


class WorkerDied(Exception):
    """A worker process ended without answering."""

    def __init__(self, pid: int, exitcode: int | None, item: object):
        self.pid, self.exitcode, self.item = pid, exitcode, item
        super().__init__(f"worker process {pid} {describe_exit(exitcode)}")

    @property
    def by_signal(self) -> int | None:
        """The signal that ended it (also when its handler turned one into exit status 128 + N)."""
        if self.exitcode is None:
            return None
        if self.exitcode < 0:
            return -self.exitcode
        return self.exitcode - 128 if 128 < self.exitcode < 128 + signal.NSIG else None


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "closed its pipe"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {exitcode}"


@dataclass
class _Worker:
    process: object  # multiprocessing.Process
    connection: Connection
    item: object = None
    load: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid


def _serve(connection: Connection, inherited: list[Connection], task: Callable, start: Callable[[], None] | None):
    """A worker's life: answer each item with ``task(item)`` until told to stop (None) or the parent is gone."""
    for other in inherited:  # the parent's ends of the other workers' pipes
        other.close()
    if start is not None:
        start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent across the fork
    while True:
        try:
            item = connection.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        connection.send(task(item))


class ForkPool(Generic[Item, Result]):
    """Up to ``size`` forked workers calling ``task`` on items; use as a context manager.

    ``start`` runs first in each worker (set its signal handlers there). On
    leaving the block normally the workers are told to end and are joined;
    on an exception (Ctrl-C included) they are stopped (:meth:`stop`).
    """

    def __init__(self, size: int, task: Callable[[Item], Result], *, start: Callable[[], None] | None = None,
                 recycle_after: int = 0, weight: Callable[[Item], int] = lambda item: 1):
        import multiprocessing

        self.size = max(1, size)
        self.task = task
        self.start = start
        self.recycle_after = recycle_after
        self.weight = weight
        self.context = multiprocessing.get_context("fork")
        self.workers: list[_Worker] = []
        self.pids: set[int] = set()  # every worker this pool started, ended ones included

    def __enter__(self) -> "ForkPool[Item, Result]":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.stop()

    def _spawn(self) -> _Worker:
        parent_end, child_end = self.context.Pipe()
        inherited = [w.connection for w in self.workers]
        process = self.context.Process(target=_serve, args=(child_end, inherited, self.task, self.start),
                                       daemon=True)
        # Forked with Ctrl-C and SIGTERM blocked: the worker sets its own handlers
        # first (``start``), instead of running the parent's for a moment.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child_end.close()
        worker = _Worker(process, parent_end)
        self.workers.append(worker)
        self.pids.add(process.pid)
        return worker

    def _retire(self, worker: _Worker) -> None:
        """Tell an idle worker to end and wait for it."""
        try:
            worker.connection.send(None)
        except OSError:  # already gone
            pass
        worker.process.join()
        worker.connection.close()
        self.workers.remove(worker)

    def map_unordered(self, items: Iterable[Item]) -> Iterator[Result]:
        """Each item's result, in the order they finish; :class:`WorkerDied` if a worker ends without one."""
        waiting = deque(items)
        busy: dict[Connection, _Worker] = {}

        def give(worker: _Worker) -> None:
            if not waiting:
                self._retire(worker)
                return
            worker.item = waiting.popleft()
            try:
                worker.connection.send(worker.item)
            except OSError:  # it ended after its last answer
                worker.process.join()
                raise WorkerDied(worker.pid, worker.process.exitcode, worker.item) from None
            busy[worker.connection] = worker

        for _ in range(min(self.size, len(waiting))):
            give(self._spawn())
        while busy:
            ready = set(wait([*busy, *(w.process.sentinel for w in busy.values())]))
            for connection, worker in list(busy.items()):
                if connection not in ready and worker.process.sentinel not in ready:
                    continue
                try:
                    result = connection.recv()
                except (EOFError, OSError, pickle.UnpicklingError):
                    worker.process.join()
                    raise WorkerDied(worker.pid, worker.process.exitcode, worker.item) from None
                del busy[connection]
                worker.load += self.weight(worker.item)
                worker.item = None
                if self.recycle_after and worker.load >= self.recycle_after and waiting:
                    self._retire(worker)
                    worker = self._spawn()
                give(worker)
                yield result

    def close(self) -> None:
        """Tell every worker to end, and wait for them; workers still on an item are stopped instead.

        (One whose answer nobody reads could block on its full pipe forever.)
        """
        if any(worker.item is not None for worker in self.workers):
            self.stop()
            return
        for worker in list(self.workers):
            self._retire(worker)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to every worker, SIGKILL to those still there after ``grace`` seconds; all are joined.

        A second Ctrl-C or SIGTERM meanwhile does not cut it short (workers
        would be left behind): it is raised once every worker has ended.
        """
        deferred: KeyboardInterrupt | None = None
        while True:
            try:
                self._stop_all(grace)
                break
            except KeyboardInterrupt as exc:
                deferred = exc
        if deferred is not None:
            raise deferred

    def _stop_all(self, grace: float) -> None:
        for worker in self.workers:
            if worker.process.exitcode is None:
                worker.process.terminate()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGCONT)  # a stopped one (Ctrl-Z) acts on it now
        deadline = time.monotonic() + grace
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self.workers.clear()
