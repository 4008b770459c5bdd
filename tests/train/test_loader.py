"""The pretokenized loader: windows, rank split, mixing, and exact resume through TorchTitan's loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, SHARED_DATA
from titanenv.data import preprocess as pre
from titanenv.train.dataset import PackedWindows, Source, TrainDataError

GPT2 = SHARED_DATA / "tokenizers" / "gpt2"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = []
    for corpus in ("openwebtext_1000.jsonl", "wikitext2_valid_test.jsonl"):
        out = tmp_path_factory.mktemp("data") / "train"
        plan = pre.prepare([str(SHARED_DATA / "corpus" / corpus)], base=REPO_ROOT, tokenizer=str(GPT2), output=out)
        pre.run(plan, workers=1)
        made.append(out)
    return made[0], made[1]


def _loader(prefixes, weights, *, rank=0, world=1, batch=4, seq_len=64, workers=0):
    from titanenv.train.loader import PretokenizedDataLoader

    config = PretokenizedDataLoader.Config(paths=[str(p) for p in prefixes], weights=weights, num_workers=workers,
                                           vocab_size=50257)
    return PretokenizedDataLoader(config, dp_world_size=world, dp_rank=rank, seq_len=seq_len,
                                  local_batch_size=batch, snapshot_every_n_steps=1)


def _take(loader, n):
    out = []
    iterator = iter(loader)
    for _ in range(n):
        inputs, labels = next(iterator)
        out.append((inputs["input"].clone(), labels.clone()))
    return out


def test_windows_are_shifted_pairs_of_the_token_stream(datasets) -> None:
    from titanenv.data.indexed import IndexedDataset

    owt, _ = datasets
    stream = IndexedDataset(owt).tokens
    (inputs, labels), = _take(_loader([owt], [1.0], batch=2, seq_len=64), 1)
    assert inputs.shape == labels.shape == (2, 64)
    assert (inputs[:, 1:] == labels[:, :-1]).all()
    for row in inputs:
        joined = np.asarray(stream).astype(np.int64)
        start = int(np.flatnonzero(np.lib.stride_tricks.sliding_window_view(joined, 8).__eq__(row[:8].numpy()).all(1))[0])
        assert start % 64 == 0 and (joined[start : start + 64] == row.numpy()).all()


def test_ranks_never_share_a_sample(datasets) -> None:
    owt, _ = datasets
    seen = []
    for rank in range(2):
        batches = _take(_loader([owt], [1.0], rank=rank, world=2), 6)
        seen.append({tuple(row.tolist()) for inputs, _ in batches for row in inputs})
    assert len(seen[0]) == len(seen[1]) == 24 and not seen[0] & seen[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_saved_position_continues_exactly(datasets, workers: int) -> None:
    owt, wiki = datasets
    straight = _take(_loader([owt, wiki], [0.7, 0.3], workers=workers), 8)
    first = _loader([owt, wiki], [0.7, 0.3], workers=workers)
    part = _take(first, 5)
    state = first.state_dict()
    resumed = _loader([owt, wiki], [0.7, 0.3], workers=workers)
    resumed.load_state_dict(state)
    rest = _take(resumed, 3)
    for (a, b), (c, d) in zip(straight, part + rest):
        assert (a == c).all() and (b == d).all()


def test_mixing_follows_the_weights(datasets) -> None:
    owt, wiki = datasets
    windows = PackedWindows([Source(owt, 3.0), Source(wiki, 1.0)], seq_len=64, batch_size=8)
    picks = [d for batch in range(50) for d, _ in windows.batch_samples(batch)]
    assert picks.count(0) == 300 and picks.count(1) == 100


def test_bad_datasets_are_named_in_one_line(datasets, tmp_path: Path) -> None:
    owt, _ = datasets
    with pytest.raises(TrainDataError, match="no such index file; run data.preprocess"):
        PackedWindows([Source(tmp_path / "missing", 1.0)], seq_len=64, batch_size=1)
    with pytest.raises(TrainDataError, match="does not fit the model's vocabulary of 2,048"):
        PackedWindows([Source(owt, 1.0)], seq_len=64, batch_size=1, vocab_size=2048)
    with pytest.raises(TrainDataError, match="cannot fill one window of seq_len"):
        PackedWindows([Source(owt, 1.0)], seq_len=2_000_000, batch_size=1)
