"""TorchTitan's side of the pretokenized loader: the one module that knows TorchTitan's dataloader API.

``PretokenizedDataLoader`` is a ``ParallelAwareDataloader`` (torchtitan
0.3.0's extension point for data), built by the trainer with the
data-parallel rank, ``seq_len`` and batch size; TorchTitan's main branch
replaced these loaders with Grain, so a port touches this file only.

TorchTitan's validator (``components/validate.py``) builds its loader from
``dataclasses.replace(config.dataloader, infinite=steps != -1)``, anew for
each validation: ``infinite`` false is one pass over every window of the
validation datasets, split evenly over the data-parallel ranks (the
remainder left out and said so); true is the seeded, weighted order of
training, of which the validator takes its ``steps`` batches. Both start
from their beginning every time: each validation sees the same windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.utils.data
from torchtitan.components.dataloader import ParallelAwareDataloader

from titanenv.train.dataset import PackedWindows, Source, WindowStream


class _Samples(torch.utils.data.IterableDataset):
    """WindowStream as a torch IterableDataset (what StatefulDataLoader iterates and snapshots)."""

    def __init__(self, stream: WindowStream):
        self.stream = stream

    def __iter__(self):
        return iter(self.stream)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


class PretokenizedDataLoader(ParallelAwareDataloader):
    """Packed windows from Megatron .bin/.idx datasets written by data.preprocess."""

    # What the datasets are for and the TOML key naming them, in messages.
    ROLE = ("training", "[data] datasets")

    @dataclass(kw_only=True, slots=True)
    class Config(ParallelAwareDataloader.Config):
        paths: list[str] = field(default_factory=list)
        """Dataset prefixes (PREFIX.bin + PREFIX.idx)."""

        weights: list[float] = field(default_factory=list)
        """Sampling weight of each dataset (default: equal)."""

        seed: int = 1234
        """Seed of the window order."""

        vocab_size: int = 0
        """The model's vocabulary: every token id must be below it (0: not checked)."""

        infinite: bool = True
        """Endless seeded order (training); false: every window once, evenly over the ranks, then the end."""

    def __init__(self, config: Config, *, dp_world_size: int, dp_rank: int, tokenizer=None, seq_len: int,
                 local_batch_size: int, snapshot_every_n_steps: int | None = 1, **kwargs):
        weights = list(config.weights) or [1.0] * len(config.paths)
        if len(weights) != len(config.paths):
            raise ValueError(f"{len(config.paths)} {self.ROLE[0]} dataset paths but {len(weights)} weights")
        role, key = self.ROLE
        windows = PackedWindows(
            [Source(Path(p), float(w)) for p, w in zip(config.paths, weights)],
            seq_len=seq_len, batch_size=local_batch_size, dp_rank=dp_rank, dp_world_size=dp_world_size,
            seed=config.seed, vocab_size=config.vocab_size or None, one_pass=not config.infinite,
            role=role, key=key,
        )
        if windows.batches_per_rank is not None and dp_rank == 0:
            _say_once(f"{role}: one pass over {windows.windows_total:,} window(s) of {len(config.paths)} "
                      f"dataset(s): {windows.batches_per_rank:,} batch(es) of {local_batch_size} on each of "
                      f"{dp_world_size} data-parallel rank(s)"
                      + (f"; the last {windows.dropped:,} window(s) left out so that every rank runs as many"
                         if windows.dropped else ""))
        super().__init__(
            _Samples(WindowStream(windows)),
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            batch_size=local_batch_size,
            num_workers=config.num_workers,
            persistent_workers=config.persistent_workers,
            pin_memory=config.pin_memory,
            prefetch_factor=config.prefetch_factor,
            snapshot_every_n_steps=snapshot_every_n_steps,
        )


class ValidationDataLoader(PretokenizedDataLoader):
    """The validator's loader: the [data] valid_datasets, one pass unless [validator] steps is set."""

    ROLE = ("validation", "[data] valid_datasets")

    @dataclass(kw_only=True, slots=True)
    class Config(PretokenizedDataLoader.Config):
        infinite: bool = False
        """The validator sets it: false with [validator] steps = -1 (one pass), else true."""


_said: set[str] = set()


def _say_once(message: str) -> None:
    """Log a message once per process (the validator rebuilds its loader for every validation)."""
    if message in _said:
        return
    _said.add(message)
    from torchtitan.tools.logging import logger

    logger.info(message)
