"""Parquet and Arrow inputs: finding a saved dataset's files, cutting Parquet into chunks, reading texts.

- A Parquet file (``.parquet``) is cut into chunks of whole row groups,
  about the chunk size of the text column each (on disk), so a file with
  many row groups spreads over every worker and rank like a large JSONL.
- An Arrow file (``.arrow``: IPC stream, as ``datasets`` writes it, or IPC
  file) is one chunk. A dataset saved by ``datasets``' ``save_to_disk`` (a
  directory with ``state.json`` and ``dataset_info.json``) is its Arrow
  files, in the order ``state.json`` lists them.

Only the text column is read, a record batch at a time (about
:data:`~titanenv.data.sources.SLICE_BYTES` of text), so memory stays bounded
by a batch (Parquet: a row group's compressed column, as pyarrow reads it).
Rows that hold no document are skipped and counted like bad JSON lines, with
their file and row (0-based, as pyarrow and ``datasets`` index rows): a
missing column ("no text key"), a column that is not strings ("text is not
a string"), a null ("null text"), an empty text, invalid UTF-8 (Arrow files
are not checked when written).

pyarrow is imported inside the functions: listing tasks never pays for it.

pyarrow starts threads of its own (an allocator's, an I/O pool) on first
use. A signal sent to the process (Ctrl-C, SIGTERM from Slurm or from the
pool stopping its workers) may land on any thread that does not block it,
and one that lands on such a thread leaves the main thread asleep in a
wait: a worker process then never ends. So every call into pyarrow here
runs with SIGINT and SIGTERM blocked (:func:`signals_held`): threads it
starts inherit that and never take them, and a signal sent meanwhile
arrives once the call returns.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from titanenv.data.sources import SLICE_BYTES, Chunk, InputError, InputFile, Skipped

PARQUET = (".parquet",)
ARROW = (".arrow",)
# Rows per record batch are chosen for about SLICE_BYTES of text, within these bounds.
MIN_BATCH_ROWS, MAX_BATCH_ROWS = 16, 65536


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM blocked in this (main) thread meanwhile, so threads started meanwhile never take them."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal sent meanwhile arrives now


def pyarrow_modules(path: Path):
    """pyarrow with its parquet and ipc modules; one line naming the input where it is missing."""
    try:
        with signals_held():  # importing starts the allocator's thread
            import pyarrow
            import pyarrow.compute
            import pyarrow.ipc
            import pyarrow.parquet
    except ImportError:
        raise InputError(f"input {path}: reading Parquet and Arrow needs the pyarrow package "
                         "(pip install 'titanenv[data]')") from None
    return pyarrow


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (path / "state.json").is_file()


def saved_dataset_files(path: Path, shown: str) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` directory, in its order; one-line errors naming ``shown``."""
    if (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            splits = []
        named = ", ".join(str(Path(shown) / s) for s in splits) or "its split directories"
        raise InputError(f"input {shown}: a DatasetDict saved by datasets; name one of its splits: {named}")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        names = [item["filename"] for item in state["_data_files"]]
    except OSError as exc:
        raise InputError(f"input {shown}/state.json: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"input {shown}/state.json: not a datasets save_to_disk state (no _data_files list)") from None
    if state.get("_indices_data_files"):
        raise InputError(f"input {shown}: saved with an indices mapping; save it again after flatten_indices()")
    files = []
    for name in names:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise InputError(f"input {shown}/state.json: names {name!r}, not a file of the dataset")
        files.append(path / name)
    return files


def plan_parquet(item: InputFile, first_index: int, chunk_bytes: int, text_key: str) -> list[Chunk]:
    """Whole row groups, gathered until the text column holds about ``chunk_bytes`` on disk."""
    with signals_held():
        metadata = _parquet_file(item.path).metadata
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    column = names.index(text_key) if text_key in names else None
    chunks: list[Chunk] = []
    start = first_row = rows = nbytes = 0
    for group in range(metadata.num_row_groups):
        meta = metadata.row_group(group)
        nbytes += (meta.column(column).total_compressed_size if column is not None
                   else sum(meta.column(i).total_compressed_size for i in range(meta.num_columns)))
        rows += meta.num_rows
        if nbytes >= chunk_bytes or group == metadata.num_row_groups - 1:
            chunks.append(Chunk(first_index + len(chunks), item.path, start, group + 1, kind="parquet",
                                nbytes=nbytes, first_row=first_row))
            start, first_row, nbytes = group + 1, first_row + rows, 0
            rows = 0
    return chunks


def _parquet_file(path: Path):
    pyarrow = pyarrow_modules(path)
    try:
        return pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise InputError(f"input {path}: not a readable Parquet file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class TextBatch:
    """Texts of one record batch that are documents (a string array: no nulls, no empty, valid UTF-8)."""

    texts: Any  # pyarrow StringArray or LargeStringArray
    skipped: list[Skipped]  # Skipped.line: the row's 0-based index in its file
    nbytes: int  # input bytes this batch accounts for (progress)


def read_texts(chunk: Chunk, text_key: str, slice_bytes: int = SLICE_BYTES) -> Iterator[TextBatch]:
    """The documents of a Parquet or Arrow chunk, a record batch at a time.

    Each batch is read with signals held (see the module's doc); the caller
    uses it with them let through, so a stop is never more than a batch away.
    """
    batches = (_parquet_texts(chunk, text_key, slice_bytes) if chunk.kind == "parquet"
               else _arrow_texts(chunk, text_key))
    try:
        while True:
            with signals_held():
                batch = next(batches, None)
            if batch is None:
                return
            yield batch
    finally:
        with signals_held():
            batches.close()


def _parquet_texts(chunk: Chunk, text_key: str, slice_bytes: int) -> Iterator[TextBatch]:
    parquet = _parquet_file(chunk.path)
    metadata = parquet.metadata
    groups = range(chunk.start, chunk.end)
    rows = sum(metadata.row_group(g).num_rows for g in groups)
    schema = parquet.schema_arrow
    row = chunk.first_row
    if text_key not in schema.names:
        skipped = [Skipped("no text key", r, tuple(schema.names)) for r in range(row, row + rows)]
        yield TextBatch(_empty_strings(), skipped, chunk.nbytes)
        return
    column = schema.names.index(text_key)
    text_bytes = sum(metadata.row_group(g).column(column).total_uncompressed_size for g in groups)
    batch_rows = min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, slice_bytes * rows // max(text_bytes, 1)))
    counted = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=list(groups), columns=[text_key],
                                          use_threads=False):
            texts, skipped = _documents_of(batch.column(0), row)
            row += batch.num_rows
            # Progress: the chunk's bytes in proportion to its rows read.
            share = chunk.nbytes * (row - chunk.first_row) // max(rows, 1) - counted
            counted += share
            yield TextBatch(texts, skipped, share)
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueError/OSError subclasses
        raise InputError(f"input {chunk.path}: row groups {chunk.start}..{chunk.end - 1}: cannot read them "
                         f"({_first_line(exc)})") from None


def _arrow_texts(chunk: Chunk, text_key: str) -> Iterator[TextBatch]:
    pyarrow = pyarrow_modules(chunk.path)
    try:
        with pyarrow.memory_map(str(chunk.path)) as source:
            try:
                reader = pyarrow.ipc.open_stream(source)
                batches = iter(reader)
                position = source.tell
            except pyarrow.ArrowInvalid:  # the IPC file format (random access), not a stream
                source.seek(0)
                reader = pyarrow.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                share = source.size() // max(reader.num_record_batches, 1)
                position = None
            names = reader.schema.names
            row, counted = 0, 0
            for batch in batches:
                if text_key in names:
                    texts, skipped = _documents_of(batch.column(names.index(text_key)), row)
                else:
                    texts = _empty_strings()
                    skipped = [Skipped("no text key", r, tuple(names)) for r in range(row, row + batch.num_rows)]
                row += batch.num_rows
                if position is not None:
                    share = position() - counted
                counted += share
                yield TextBatch(texts, skipped, share)
    except (OSError, ValueError) as exc:
        raise InputError(f"input {chunk.path}: not a readable Arrow file ({_first_line(exc)})") from None


def _empty_strings():
    import pyarrow

    return pyarrow.nulls(0, pyarrow.large_string())


def _documents_of(column, first_row: int) -> tuple[Any, list[Skipped]]:
    """The rows of ``column`` that are documents, and the rest as Skipped (row numbers from ``first_row``).

    Nulls and empty texts are found in the array's own buffers with numpy:
    pyarrow's compute functions and ``pyarrow.array`` would import pandas
    (0.15 s and 100 MiB more in every process here).
    """
    import numpy as np
    import pyarrow

    kind = column.type
    if pyarrow.types.is_dictionary(kind) and _is_text(kind.value_type):
        column, kind = column.dictionary_decode(), kind.value_type
    if pyarrow.types.is_string_view(kind):
        column, kind = column.cast(pyarrow.large_string()), pyarrow.large_string()
    if not _is_text(kind):
        reason = "null text" if pyarrow.types.is_null(kind) else "text is not a string"
        return _empty_strings(), [Skipped(reason, first_row + i) for i in range(len(column))]
    try:
        column.validate(full=True)  # UTF-8: Arrow files written by anyone are not checked on reading
    except pyarrow.ArrowInvalid:
        return _documents_one_by_one(column, first_row)
    offsets, _ = string_buffers(column)
    empty = offsets[1:] == offsets[:-1]
    nulls = np.zeros(len(column), dtype=bool)
    if column.null_count:
        validity = np.frombuffer(column.buffers()[0], dtype=np.uint8)
        nulls = np.unpackbits(validity, bitorder="little")[column.offset : column.offset + len(column)] == 0
    bad = empty | nulls
    if not bad.any():
        return column, []
    skipped = [Skipped("null text" if nulls[i] else "empty text", first_row + int(i)) for i in np.flatnonzero(bad)]
    keep = pyarrow.py_buffer(np.packbits(~bad, bitorder="little"))
    return column.filter(pyarrow.Array.from_buffers(pyarrow.bool_(), len(column), [None, keep])), skipped


def _documents_one_by_one(column, first_row: int) -> tuple[Any, list[Skipped]]:
    import pyarrow

    texts: list[str] = []
    skipped: list[Skipped] = []
    binary = pyarrow.large_binary() if pyarrow.types.is_large_string(column.type) else pyarrow.binary()
    for offset, value in enumerate(column.view(binary).to_pylist()):
        row = first_row + offset
        if value is None:
            skipped.append(Skipped("null text", row))
        elif not value:
            skipped.append(Skipped("empty text", row))
        else:
            try:
                texts.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                skipped.append(Skipped("invalid UTF-8", row))
    return pyarrow.array(texts, type=pyarrow.large_string()), skipped


def _is_text(kind) -> bool:
    import pyarrow

    return pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind)


def string_buffers(texts) -> tuple[Any, Any]:
    """A string array's offsets (int64, from 0 relative to its data) and its UTF-8 bytes, without copying text."""
    import numpy as np
    import pyarrow

    _, offsets_buffer, data_buffer = texts.buffers()
    kind = np.int64 if pyarrow.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=kind, count=len(texts) + 1,
                            offset=texts.offset * np.dtype(kind).itemsize).astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    first, last = int(offsets[0]), int(offsets[-1])
    return offsets - first, data[first:last]
