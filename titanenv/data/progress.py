"""Preprocessing's progress: counters the worker processes share with the parent, and how they are shown."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from titanenv.files import human_size


class Counters:
    """Documents, tokens and input bytes done so far, in memory shared with forked workers.

    Without a lock: each worker only adds, the parent only reads, and a
    figure read while it changes is off by one update at most.
    """

    def __init__(self) -> None:
        import multiprocessing

        self.values = multiprocessing.get_context("fork").Array("q", 3, lock=False)

    def add(self, documents: int, tokens: int, nbytes: int) -> None:
        self.values[0] += documents
        self.values[1] += tokens
        self.values[2] += nbytes

    def read(self) -> tuple[int, int, int]:
        return self.values[0], self.values[1], self.values[2]


class Progress:
    """A progress bar on a terminal; plain log lines every ``interval`` seconds otherwise (Slurm logs)."""

    def __init__(self, *, label: str = "preprocess", interval: float = 30.0,
                 echo: Callable[[str], None] | None = None, bar: bool | None = None):
        self.label = label
        self.interval = interval
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.bar = sys.stderr.isatty() if bar is None else bar
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, total_bytes: int, counters: Counters) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(total_bytes, counters), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, total_bytes: int, counters: Counters) -> None:
        started = time.perf_counter()
        if self.bar:
            from tqdm import tqdm

            with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=self.label, file=sys.stderr,
                      dynamic_ncols=True) as bar:
                while True:
                    stopping = self._stop.wait(0.25)
                    docs, tokens, nbytes = counters.read()
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    bar.update(nbytes - bar.n)
                    bar.set_postfix_str(f"{docs:,} docs, {tokens / elapsed / 1e6:.2f} M tok/s", refresh=False)
                    if stopping:
                        return
        while not self._stop.wait(self.interval):
            docs, tokens, nbytes = counters.read()
            elapsed = max(time.perf_counter() - started, 1e-9)
            share = f" ({100 * nbytes / total_bytes:.0f}%)" if total_bytes else ""
            self.echo(
                f"{self.label}: {human_size(nbytes)} of {human_size(total_bytes)}{share}, {docs:,} documents, "
                f"{tokens:,} tokens, {tokens / elapsed / 1e6:.2f} M tokens/s"
            )
