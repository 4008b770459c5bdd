"""The MMIDIDX pair: exact bytes, round trip, merge, crash safety, corruption."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from titanenv.data.indexed import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    merge_datasets,
    optimal_dtype,
)


def test_exact_bytes_of_a_small_dataset(tmp_path: Path) -> None:
    with IndexedDatasetWriter(tmp_path / "ds", np.uint16) as writer:
        writer.add_document([5, 6, 50256])
        writer.add_document([7, 50256])
    expected_idx = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)
        + struct.pack("<B", 8)  # uint16
        + struct.pack("<Q", 2)  # sequences
        + struct.pack("<Q", 3)  # documents: 0, 1, 2
        + struct.pack("<2i", 3, 2)
        + struct.pack("<2q", 0, 6)  # byte pointers
        + struct.pack("<3q", 0, 1, 2)
    )
    assert (tmp_path / "ds.idx").read_bytes() == expected_idx
    assert (tmp_path / "ds.bin").read_bytes() == struct.pack("<5H", 5, 6, 50256, 7, 50256)


def test_round_trip_and_batch_writes_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 70000, size=n) for n in (1, 10, 0, 300)]
    with IndexedDatasetWriter(tmp_path / "one", np.int32) as writer:
        for doc in docs:
            writer.add_document(doc)
    with IndexedDatasetWriter(tmp_path / "batch", np.int32) as writer:
        writer.add_documents(np.array([len(d) for d in docs[:2]]), np.concatenate(docs[:2]))
        writer.add_documents(np.array([len(d) for d in docs[2:]]), np.concatenate(docs[2:]))
    for name in ("one", "batch"):
        dataset = IndexedDataset(tmp_path / name)
        assert len(dataset) == 4 and dataset.document_count == 4
        assert dataset.num_tokens == 311
        for i, doc in enumerate(docs):
            assert dataset[i].tolist() == doc.tolist()
        assert dataset.problems() == []
    assert (tmp_path / "one.bin").read_bytes() == (tmp_path / "batch.bin").read_bytes()
    assert (tmp_path / "one.idx").read_bytes() == (tmp_path / "batch.idx").read_bytes()


def test_merge_concatenates_like_megatron(tmp_path: Path) -> None:
    parts = []
    for part, docs in enumerate(([[1, 2], [3]], [[4, 5, 6]], [[7], [8], [9, 10]])):
        with IndexedDatasetWriter(tmp_path / f"part_{part}", np.uint16) as writer:
            for doc in docs:
                writer.add_document(doc)
        parts.append(tmp_path / f"part_{part}")
    merge_datasets(parts, tmp_path / "merged")
    merged = IndexedDataset(tmp_path / "merged")
    assert [merged[i].tolist() for i in range(len(merged))] == [[1, 2], [3], [4, 5, 6], [7], [8], [9, 10]]
    assert merged.document_indices.tolist() == [0, 1, 2, 3, 4, 5, 6]
    with IndexedDatasetWriter(tmp_path / "direct", np.uint16) as writer:
        for doc in ([1, 2], [3], [4, 5, 6], [7], [8], [9, 10]):
            writer.add_document(doc)
    assert (tmp_path / "merged.idx").read_bytes() == (tmp_path / "direct.idx").read_bytes()


def test_a_failure_leaves_no_pair_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "ds", np.uint16) as writer:
            writer.add_document([1, 2, 3])
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_dtype_choice_matches_megatron() -> None:
    assert optimal_dtype(50257) == np.uint16
    assert optimal_dtype(65499) == np.uint16
    assert optimal_dtype(65500) == np.int32
    assert optimal_dtype(None) == np.int32


def test_corruption_is_detected(tmp_path: Path) -> None:
    with IndexedDatasetWriter(tmp_path / "ds", np.uint16) as writer:
        writer.add_document([1, 2, 3])
        writer.add_document([4])
    data = tmp_path / "ds.bin"
    data.write_bytes(data.read_bytes()[:-2])
    with pytest.raises(IndexedDatasetError, match="index promises"):
        IndexedDataset(tmp_path / "ds")
    (tmp_path / "ds.idx").write_bytes(b"NOTANIDX" + b"\0" * 40)
    with pytest.raises(IndexedDatasetError, match="not an MMIDIDX index"):
        IndexedDataset(tmp_path / "ds")
    with pytest.raises(IndexedDatasetError, match="no such index file"):
        IndexedDataset(tmp_path / "missing")
