"""Megatron-LM's indexed dataset (``MMIDIDX``): a ``.bin`` of tokens and an ``.idx`` index.

The byte layout is Megatron-LM's ``megatron/core/datasets/indexed_dataset.py``
(also read by NeMo and datatrove), so files written here load there and the
other way round:

``.idx``: ``b"MMIDIDX\\x00\\x00"``, version ``<Q`` (1), dtype code ``<B``,
sequence count ``<Q``, document count ``<Q``, then the sequence lengths
(int32), sequence byte pointers (int64) and document indices (int64; ``0``
then, after each document, the number of sequences so far).

``.bin``: the tokens of every sequence, back to back, in the index's dtype.

Writers stream tokens to temporary names and rename both files only when
complete, so a crash never leaves a pair that looks finished.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Iterable, Sequence

import numpy as np

from titanenv.errors import TitanEnvError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# Megatron-LM's DType codes.
DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF = {np.dtype(t): code for code, t in DTYPE_CODES.items()}
_FIXED_HEADER = struct.Struct("<9sQBQQ")


class IndexedDatasetError(TitanEnvError):
    """A ``.bin``/``.idx`` pair is missing, truncated or inconsistent."""


def bin_path(prefix: Path | str) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: Path | str) -> Path:
    return Path(f"{prefix}.idx")


def optimal_dtype(vocab_size: int | None) -> np.dtype:
    """The token dtype Megatron-LM picks: uint16 below 65,500 ids, else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def dtype_code(dtype: np.dtype | type) -> int:
    try:
        return _CODE_OF[np.dtype(dtype)]
    except KeyError:
        raise IndexedDatasetError(f"dtype {np.dtype(dtype)} has no MMIDIDX code") from None


def index_size(sequences: int, documents: int) -> int:
    """Bytes of an ``.idx`` file with this many sequences and documents (not counting the leading 0)."""
    return _FIXED_HEADER.size + sequences * (4 + 8) + (documents + 1) * 8


def index_bytes(dtype: np.dtype, sequence_lengths: np.ndarray, document_indices: np.ndarray) -> bytes:
    """The complete ``.idx`` file for these sequences and documents."""
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= np.dtype(dtype).itemsize
    documents = np.asarray(document_indices, dtype=np.int64)
    header = _FIXED_HEADER.pack(INDEX_HEADER, INDEX_VERSION, dtype_code(dtype), len(lengths), len(documents))
    return header + lengths.tobytes(order="C") + pointers.tobytes(order="C") + documents.tobytes(order="C")


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (this process's own name)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def temporary_target(path: Path) -> Path | None:
    """The file a :func:`temporary_path` is written for (None for any other name)."""
    name, marker, pid = path.name.rpartition(".tmp-")
    if not (marker and pid.isdigit() and name.startswith(".") and len(name) > 1):
        return None
    return path.with_name(name[1:])


def rename_into_place(temporary: Path, final: Path, durable: bool = True) -> None:
    """Rename a finished temporary file over ``final``; ``durable``: flushed to disk first."""
    if durable:
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(temporary, final)


def copy_into(source: Path, target: int, offset: int) -> int:
    """Write all of ``source`` into the open file descriptor ``target`` at ``offset``; returns its size.

    In the kernel where it can (copy_file_range: no copy through user space,
    a clone on file systems that share blocks); else read and write.
    """
    with open(source, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        done = 0
        copy = getattr(os, "copy_file_range", None)
        while copy is not None and done < size:
            try:
                copied = copy(handle.fileno(), target, size - done, done, offset + done)
            except OSError:  # not between these file systems: through user space
                break
            if copied == 0:
                break
            done += copied
        while done < size:
            block = os.pread(handle.fileno(), min(16 << 20, size - done), done)
            if not block:
                raise IndexedDatasetError(f"{source}: shorter than it was a moment ago")
            done += os.pwrite(target, block, offset + done)
    return size


def _append_file(source: Path, target) -> None:
    """Append ``source`` to the open file object ``target``."""
    target.flush()
    position = target.tell()
    target.seek(position + copy_into(source, target.fileno(), position))


class IndexedDatasetWriter:
    """Stream documents into ``PREFIX.bin``/``PREFIX.idx``; one sequence per document.

    Use as a context manager: on success both files appear under their final
    names (the ``.idx`` last); on an exception the temporary files are removed.
    ``durable`` (the default) flushes them to disk before the rename; pieces
    that are checked again before use (preprocessing chunks) skip that.
    """

    def __init__(self, prefix: Path | str, dtype: np.dtype | type, *, durable: bool = True):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self.durable = durable
        dtype_code(self.dtype)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = temporary_path(bin_path(self.prefix))
        self._bin = open(self._bin_tmp, "wb")
        self._lengths: list[np.ndarray] = []
        self._document_ends: list[int] = []
        self._count = 0
        self.tokens_written = 0

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        array = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(array.tobytes(order="C"))
        self._lengths.append(np.array([array.size], dtype=np.int32))
        self._count += 1
        self._document_ends.append(self._count)
        self.tokens_written += int(array.size)

    def add_documents(self, lengths: np.ndarray, tokens: np.ndarray) -> None:
        """Many documents at once: ``tokens`` holds them back to back, ``lengths`` their sizes."""
        lengths = np.asarray(lengths, dtype=np.int32)
        flat = np.asarray(tokens, dtype=self.dtype)
        if int(lengths.sum(dtype=np.int64)) != flat.size:
            raise IndexedDatasetError("document lengths do not add up to the number of tokens")
        self._bin.write(memoryview(np.ascontiguousarray(flat)).cast("B"))  # no copy, unlike tobytes()
        self._lengths.append(lengths)
        self._document_ends.extend(range(self._count + 1, self._count + len(lengths) + 1))
        self._count += len(lengths)
        self.tokens_written += int(flat.size)

    def add_dataset(self, prefix: Path | str) -> None:
        """Append a whole finished dataset (Megatron's ``add_index``), copying its tokens."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(f"{prefix}: dtype {other.dtype} differs from {self.dtype}")
        self._lengths.append(np.array(other.sequence_lengths, dtype=np.int32))
        self._document_ends.extend((self._count + other.document_indices[1:]).tolist())
        self._count += len(other.sequence_lengths)
        self.tokens_written += other.num_tokens
        other.close()
        _append_file(bin_path(prefix), self._bin)

    def finalize(self) -> None:
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int32)
        documents = np.array([0, *self._document_ends], dtype=np.int64)
        idx_tmp = temporary_path(idx_path(self.prefix))
        idx_tmp.write_bytes(index_bytes(self.dtype, lengths, documents))
        rename_into_place(self._bin_tmp, bin_path(self.prefix), self.durable)
        rename_into_place(idx_tmp, idx_path(self.prefix), self.durable)

    def abort(self) -> None:
        """Remove the temporary files; quietly, as it runs while another error (a full disk) is raised."""
        try:
            self._bin.close()  # flushes what is buffered: fails again on a full disk
        except OSError:
            pass
        for path in (self._bin_tmp, temporary_path(idx_path(self.prefix))):
            path.unlink(missing_ok=True)

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.abort()
            return
        try:
            self.finalize()
        except BaseException:
            self.abort()
            raise


@dataclass(frozen=True)
class IndexHeader:
    dtype: np.dtype
    sequence_count: int
    document_count: int


def read_header(path: Path) -> IndexHeader:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_FIXED_HEADER.size)
    except FileNotFoundError:
        raise IndexedDatasetError(f"{path}: no such index file") from None
    except OSError as exc:
        raise IndexedDatasetError(f"{path}: {exc.strerror}") from None
    if len(raw) < _FIXED_HEADER.size:
        raise IndexedDatasetError(f"{path}: truncated header ({len(raw)} bytes)")
    magic, version, code, sequences, documents = _FIXED_HEADER.unpack(raw)
    if magic != INDEX_HEADER:
        raise IndexedDatasetError(f"{path}: not an MMIDIDX index (header {magic!r})")
    if version != INDEX_VERSION:
        raise IndexedDatasetError(f"{path}: unsupported index version {version}")
    if code not in DTYPE_CODES:
        raise IndexedDatasetError(f"{path}: unknown dtype code {code}")
    return IndexHeader(np.dtype(DTYPE_CODES[code]), sequences, documents)


def sequence_lengths(prefix: Path | str) -> np.ndarray:
    """The sequence lengths in ``PREFIX.idx`` alone (no ``.bin`` needed)."""
    path = idx_path(Path(prefix))
    header = read_header(path)
    with open(path, "rb") as handle:
        handle.seek(_FIXED_HEADER.size)
        raw = handle.read(header.sequence_count * 4)
    if len(raw) != header.sequence_count * 4:
        raise IndexedDatasetError(f"{path}: truncated ({header.sequence_count} sequences promised)")
    return np.frombuffer(raw, dtype=np.int32)


class IndexedDataset:
    """Read a ``.bin``/``.idx`` pair through memory maps; ``dataset[i]`` is sequence i."""

    def __init__(self, prefix: Path | str):
        self.prefix = Path(prefix)
        index_file = idx_path(self.prefix)
        data_file = bin_path(self.prefix)
        header = read_header(index_file)
        self.dtype = header.dtype
        expected = (
            _FIXED_HEADER.size + header.sequence_count * (4 + 8) + header.document_count * 8
        )
        size = index_file.stat().st_size
        if size < expected:
            raise IndexedDatasetError(f"{index_file}: truncated ({size} bytes, header promises {expected})")
        index = np.memmap(index_file, mode="r", dtype=np.uint8)
        offset = _FIXED_HEADER.size
        self.sequence_lengths = np.frombuffer(index, dtype=np.int32, count=header.sequence_count, offset=offset)
        offset += header.sequence_count * 4
        self.sequence_pointers = np.frombuffer(index, dtype=np.int64, count=header.sequence_count, offset=offset)
        offset += header.sequence_count * 8
        self.document_indices = np.frombuffer(index, dtype=np.int64, count=header.document_count, offset=offset)
        self._index = index
        try:
            data_size = data_file.stat().st_size
        except FileNotFoundError:
            raise IndexedDatasetError(f"{data_file}: no such data file") from None
        self.num_tokens = int(self.sequence_lengths.sum(dtype=np.int64))
        if data_size != self.num_tokens * self.dtype.itemsize:
            raise IndexedDatasetError(
                f"{data_file}: {data_size} bytes, index promises {self.num_tokens * self.dtype.itemsize}"
            )
        self.tokens = (
            np.memmap(data_file, mode="r", dtype=self.dtype) if data_size else np.zeros(0, dtype=self.dtype)
        )

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sequence_lengths[i])]

    @property
    def document_count(self) -> int:
        """Documents, not counting the leading 0 of the document indices."""
        return max(len(self.document_indices) - 1, 0)

    def problems(self) -> list[str]:
        """Inconsistencies between lengths, pointers and document indices."""
        found = []
        lengths = self.sequence_lengths
        if (lengths < 0).any():
            found.append("negative sequence length")
        expected = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1], dtype=np.int64, out=expected[1:])
        if not np.array_equal(self.sequence_pointers, expected * self.dtype.itemsize):
            found.append("sequence pointers do not match the sequence lengths")
        docs = self.document_indices
        if len(docs) == 0 or docs[0] != 0:
            found.append("document indices do not start at 0")
        elif (np.diff(docs) < 0).any() or docs[-1] != len(lengths):
            found.append("document indices are not increasing up to the sequence count")
        return found

    def close(self) -> None:
        for name in ("tokens", "_index", "sequence_lengths", "sequence_pointers", "document_indices"):
            self.__dict__.pop(name, None)


def merge_datasets(prefixes: Iterable[Path | str], output: Path | str, dtype: np.dtype | None = None) -> None:
    """Concatenate finished datasets into one, as Megatron's merge tool does."""
    prefixes = list(prefixes)
    if not prefixes:
        raise IndexedDatasetError("nothing to merge")
    dtype = dtype or read_header(idx_path(prefixes[0])).dtype
    with IndexedDatasetWriter(output, dtype) as writer:
        for prefix in prefixes:
            writer.add_dataset(prefix)
