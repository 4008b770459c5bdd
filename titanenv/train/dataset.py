"""Packed windows over Megatron .bin/.idx datasets: the sample order, independent of TorchTitan.

Each dataset is one stream of tokens (its documents back to back, each
ending in its end-of-document token). Window ``i`` of a dataset is tokens
``[i * seq_len, (i + 1) * seq_len + 1)``: inputs are the first ``seq_len``,
labels the last ``seq_len`` (Megatron's GPT dataset packs the same way).
Windows are visited in a seeded permutation, a new one each epoch; several
datasets are blended by weight with Megatron's deterministic rule (always
take from the dataset furthest behind its share).

Sample ``k`` of the global order goes to data-parallel rank ``k %
dp_world_size``, so ranks never share a sample.

A *one-pass* order (``one_pass``; validation reads it) instead visits every
window of every dataset once, in order (the first dataset's windows, then
the next one's; weights do not apply), and ends: each rank gets the same
number of whole batches, ``windows // (dp_world_size * batch_size)``, and
the few windows beyond that are left out (``PackedWindows.dropped``), so no
rank waits for another in a collective that never comes. Within a rank, samples come
in batches; with W loader workers, worker ``w`` makes batches ``w, w + W,
...`` and the loader returns them in order. A position is the number of
batches a worker has produced, so a resumed run continues exactly there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from titanenv.data.indexed import IndexedDataset, IndexedDatasetError
from titanenv.errors import TitanEnvError


class TrainDataError(TitanEnvError):
    """A training dataset is missing, corrupt or cannot fill a window."""


@dataclass(frozen=True)
class Source:
    prefix: Path
    weight: float


def open_sources(sources: Sequence[Source], *, seq_len: int, vocab_size: int | None = None,
                 role: str = "training", key: str = "[data] datasets") -> list[IndexedDataset]:
    """Open and check every dataset: consistent, ids below ``vocab_size``, long enough for a window.

    ``role`` and ``key`` name the datasets in errors (validation ones: [data] valid_datasets).
    """
    if not sources:
        raise TrainDataError(f"no {role} dataset given ({key})")
    label = "dataset" if role == "training" else f"{role} dataset"
    opened = []
    for source in sources:
        if source.weight <= 0:
            raise TrainDataError(f"{label} {source.prefix}: weight {source.weight} must be positive")
        try:
            dataset = IndexedDataset(source.prefix)
        except IndexedDatasetError as exc:
            raise TrainDataError(f"{label} {exc}; run data.preprocess to make it") from None
        problems = dataset.problems()
        if problems:
            raise TrainDataError(f"{label} {source.prefix}: corrupt ({'; '.join(problems)}); run data.verify")
        if dataset.num_tokens < seq_len + 1:
            raise TrainDataError(
                f"{label} {source.prefix}: {dataset.num_tokens:,} tokens cannot fill one window of "
                f"seq_len + 1 = {seq_len + 1:,}; lower training.seq_len or add data"
            )
        if vocab_size is not None and dataset.num_tokens:
            largest = int(dataset.tokens.max())
            if largest >= vocab_size:
                raise TrainDataError(
                    f"{label} {source.prefix}: token id {largest} does not fit the model's vocabulary of "
                    f"{vocab_size:,}; use a model with vocab_size > {largest} or the matching tokenizer"
                )
        opened.append(dataset)
    return opened


class WindowSampler:
    """The global sample order: (dataset, window) for sample k."""

    def __init__(self, window_counts: Sequence[int], weights: Sequence[float], seed: int):
        self.window_counts = [int(n) for n in window_counts]
        total = float(sum(weights))
        self.weights = np.array([w / total for w in weights], dtype=np.float64)
        self.seed = seed
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def _blend(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Dataset of each sample in [start, start + count) and how many earlier samples it has."""
        # Megatron's BlendedDataset rule, replayed from 0 so any range is reproducible.
        end = start + count
        taken = np.zeros(len(self.weights), dtype=np.int64)
        chosen = np.empty(count, dtype=np.int64)
        nth = np.empty(count, dtype=np.int64)
        for k in range(end):
            errors = self.weights * (k + 1) - taken
            d = int(np.argmax(errors))
            if k >= start:
                chosen[k - start] = d
                nth[k - start] = taken[d]
            taken[d] += 1
        return chosen, nth

    def window(self, dataset: int, nth: int) -> int:
        count = self.window_counts[dataset]
        epoch, position = divmod(nth, count)
        key = (dataset, epoch)
        permutation = self._permutations.get(key)
        if permutation is None:
            rng = np.random.default_rng([self.seed, dataset, epoch])
            permutation = rng.permutation(count)
            self._permutations = {k: v for k, v in self._permutations.items() if k[0] != dataset}
            self._permutations[key] = permutation
        return int(permutation[position])

    def samples(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        """(dataset, window) of each global sample index (ascending indices)."""
        if len(self.weights) == 1:
            return [(0, self.window(0, k)) for k in indices]
        lo, hi = indices[0], indices[-1]
        chosen, nth = self._blend(lo, hi - lo + 1)
        return [(int(chosen[k - lo]), self.window(int(chosen[k - lo]), int(nth[k - lo]))) for k in indices]


class OnePassSampler:
    """Every window of every dataset once, in order: sample k is the k-th window of their concatenation."""

    def __init__(self, window_counts: Sequence[int]):
        self.window_counts = [int(n) for n in window_counts]
        self.starts = np.cumsum([0, *self.window_counts])
        self.total = int(self.starts[-1])

    def samples(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        found = []
        for k in indices:
            dataset = int(np.searchsorted(self.starts, k, side="right")) - 1
            found.append((dataset, int(k - self.starts[dataset])))
        return found


class PackedWindows:
    """Windows of ``seq_len + 1`` tokens, split over data-parallel ranks; iterable and resumable.

    ``one_pass``: every window once, in order, then the end; ``batches_per_rank``
    whole batches on every rank, ``dropped`` windows left over.
    """

    def __init__(self, sources: Sequence[Source], *, seq_len: int, batch_size: int, dp_rank: int = 0,
                 dp_world_size: int = 1, seed: int = 0, vocab_size: int | None = None, one_pass: bool = False,
                 role: str = "training", key: str = "[data] datasets"):
        self.sources = list(sources)
        self.datasets = open_sources(self.sources, seq_len=seq_len, vocab_size=vocab_size, role=role, key=key)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        counts = [(d.num_tokens - 1) // seq_len for d in self.datasets]
        self.batches_per_rank: int | None = None  # None: endless
        self.dropped = 0
        if one_pass:
            self.sampler: WindowSampler | OnePassSampler = OnePassSampler(counts)
            per_batch = batch_size * dp_world_size
            self.batches_per_rank, self.dropped = divmod(self.sampler.total, per_batch)
            if not self.batches_per_rank:
                raise TrainDataError(
                    f"{role} datasets ({key}): {self.sampler.total:,} window(s) of seq_len + 1 = {seq_len + 1:,} "
                    f"tokens cannot give each of {dp_world_size} data-parallel rank(s) one batch of {batch_size}; "
                    "add data or lower training.local_batch_size or training.seq_len"
                )
        else:
            self.sampler = WindowSampler(counts, [s.weight for s in self.sources], seed)
        self.batches_done = 0  # in the single-process loader; workers keep their own

    @property
    def windows_total(self) -> int:
        """Windows of all datasets together."""
        return sum(self.sampler.window_counts)

    def batch_samples(self, batch: int) -> list[tuple[int, int]]:
        """(dataset, window) of every sample in this rank's batch number ``batch``."""
        local = range(batch * self.batch_size, (batch + 1) * self.batch_size)
        return self.sampler.samples([k * self.dp_world_size + self.dp_rank for k in local])

    def tokens(self, dataset: int, window: int) -> np.ndarray:
        start = window * self.seq_len
        return np.asarray(self.datasets[dataset].tokens[start : start + self.seq_len + 1], dtype=np.int64)

    def batches(self, first: int, step: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        batch = first
        while self.batches_per_rank is None or batch < self.batches_per_rank:
            windows = [self.tokens(d, w) for d, w in self.batch_samples(batch)]
            yield batch, np.stack(windows)
            batch += step


class WindowStream:
    """The samples of one data-parallel rank as an iterable with a saveable position.

    TorchTitan's loader (``torchdata``'s StatefulDataLoader) groups
    ``batch_size`` consecutive samples into a batch and saves this object's
    ``state_dict`` in checkpoints, per loader worker.
    """

    def __init__(self, windows: PackedWindows):
        self.windows = windows
        self.produced = 0  # samples this worker has yielded

    def __iter__(self):
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        size = self.windows.batch_size
        local_batch, offset = divmod(self.produced, size)
        for batch, stacked in self.windows.batches(worker + local_batch * workers, workers):
            tokens = torch.from_numpy(stacked)
            for row in range(offset, size):
                self.produced += 1
                yield {"input": tokens[row, :-1]}, tokens[row, 1:]
            offset = 0

    def state_dict(self) -> dict:
        return {"produced": self.produced}

    def load_state_dict(self, state: dict) -> None:
        self.produced = int(state["produced"])
