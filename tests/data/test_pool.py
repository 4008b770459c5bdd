"""The preprocessing worker pool: every result, recycled workers, workers that die, a stop that always ends."""

from __future__ import annotations

import os
import signal
import time

import pytest

from titanenv.data.pool import ForkPool, WorkerDied


@pytest.fixture(autouse=True)
def hang_fails() -> None:
    """A pool that hangs fails its test (after a minute, far beyond what any of these takes) instead of the run."""
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("the pool hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _square(item: int) -> int:
    return item * item


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _blocked_signals() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_every_item_is_answered_and_workers_are_recycled_and_joined() -> None:
    before = _blocked_signals()
    with ForkPool(2, _square, recycle_after=3) as pool:
        results = sorted(pool.map_unordered(range(10)))
    assert results == [i * i for i in range(10)]
    assert len(pool.pids) >= 4  # 10 items, 3 each at most: fresh forks replaced the first two
    assert not pool.workers and all(_gone(pid) for pid in pool.pids)
    assert _blocked_signals() == before


def test_fewer_items_than_workers_start_fewer_workers() -> None:
    with ForkPool(4, _square) as pool:
        assert list(pool.map_unordered([3])) == [9]
    assert len(pool.pids) == 1


def _sleep_or_die(item: int) -> int:
    if item == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer does
    time.sleep(0.05)
    return item


def test_a_worker_killed_mid_task_is_reported_with_its_item_and_the_rest_are_stopped() -> None:
    with pytest.raises(WorkerDied) as died:
        with ForkPool(2, _sleep_or_die) as pool:
            list(pool.map_unordered([0, 1, 2, 3]))
    assert died.value.item == 1 and died.value.by_signal == signal.SIGKILL
    assert str(died.value) == f"worker process {died.value.pid} was killed by SIGKILL (out of memory?)"
    assert not pool.workers and all(_gone(pid) for pid in pool.pids)


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _quick_or_stuck(item: int) -> int:
    if item:
        time.sleep(120)
    return item


def test_stop_kills_workers_that_outlast_the_grace_period_and_restores_the_signal_mask() -> None:
    before = _blocked_signals()
    pool = ForkPool(2, _quick_or_stuck, start=_ignore_sigterm)
    results = pool.map_unordered([0, 1])
    assert next(results) == 0  # one worker idle, the other stuck in its task; both ignore SIGTERM
    pool.stop(grace=0.2)
    assert not pool.workers and all(_gone(pid) for pid in pool.pids)
    assert _blocked_signals() == before


def test_sigterm_to_every_worker_in_a_loop_never_leaves_the_parent_waiting() -> None:
    """The failure multiprocessing.Pool had: a worker ended while holding a lock the pool's stop needs."""
    for _ in range(20):
        with pytest.raises(WorkerDied) as died:
            with ForkPool(2, _square) as pool:
                for result in pool.map_unordered(range(10_000)):
                    if result == 25:
                        for pid in [w.pid for w in pool.workers]:
                            os.kill(pid, signal.SIGTERM)
        assert died.value.by_signal == signal.SIGTERM
        assert not pool.workers and all(_gone(pid) for pid in pool.pids)


def _large(item: int) -> bytes:
    return bytes(1 << 20)  # more than a pipe holds: its worker blocks until the answer is read


def test_leaving_the_block_early_stops_workers_whose_answers_nobody_reads() -> None:
    with ForkPool(2, _large) as pool:
        for _ in pool.map_unordered(range(6)):
            break
    assert not pool.workers and all(_gone(pid) for pid in pool.pids)
