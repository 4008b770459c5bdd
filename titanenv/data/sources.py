"""Inputs: finding them, cutting them into chunks, and reading JSONL documents out of a chunk.

A chunk is the unit of work of preprocessing: a byte range of an
uncompressed file that starts and ends at line boundaries (so one huge file
spreads over every worker and rank), or a whole compressed file. A chunk is
read in slices of a few MiB, so memory stays bounded whatever its size.

Lines that hold no usable document are skipped and counted by reason with
their file and line number: blank lines, malformed JSON, invalid UTF-8, a
value that is not an object, a missing text key, a text that is not a
string, and an empty text.

Parquet files and Arrow files (alone or as a dataset saved by ``datasets``)
are found here too; :mod:`titanenv.data.tables` plans and reads them.
"""

from __future__ import annotations

import glob
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from titanenv.errors import TitanEnvError

COMPRESSED = (".gz", ".zst")
SLICE_BYTES = 8 << 20
SKIP_REASONS = (
    "blank line",
    "malformed JSON",
    "invalid UTF-8",
    "not a JSON object",
    "no text key",
    "text is not a string",
    "empty text",
    "null text",
)


class InputError(TitanEnvError):
    """An input file is missing, unreadable or holds a bad line (under --strict)."""


@dataclass(frozen=True)
class InputFile:
    path: Path
    size: int
    mtime_ns: int

    @property
    def compressed(self) -> bool:
        return self.path.suffix in COMPRESSED

    @property
    def kind(self) -> str:
        """``lines`` (JSONL, maybe compressed), ``parquet`` or ``arrow``, by the file's suffix."""
        from titanenv.data import tables

        suffix = self.path.suffix.lower()
        return "parquet" if suffix in tables.PARQUET else "arrow" if suffix in tables.ARROW else "lines"


def resolve_inputs(patterns: list[str], base: Path) -> list[InputFile]:
    """Files named by ``patterns`` (paths or globs, relative to ``base``), in order, each once.

    A directory saved by ``datasets``' ``save_to_disk`` stands for its Arrow
    files. A pattern that matches nothing, an unreadable file or another
    directory is an error naming it, raised before any work starts.
    """
    from titanenv.data import tables

    if not patterns:
        raise InputError("data.inputs: no input files given")
    found: list[InputFile] = []
    seen: set[Path] = set()
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(full, recursive=True))
            if not matches:
                raise InputError(f"input {pattern}: the pattern matches no file")
        else:
            matches = [full]
        for match in matches:
            path = Path(match).resolve()
            if path.is_dir() and (tables.is_saved_dataset(path) or (path / "dataset_dict.json").is_file()):
                tables.pyarrow_modules(path)
                files = [(str(Path(match) / f.name), f) for f in tables.saved_dataset_files(path, match)]
            else:
                files = [(match, path)]
            for shown, file in files:
                if file not in seen:
                    found.append(_input_file(shown, file))
                    seen.add(file)
    return found


def _input_file(match: str, path: Path) -> InputFile:
    """One input file, checked: it exists, is a file, is readable, and its format can be read here."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError(f"input {match}: no such file") from None
    except OSError as exc:
        raise InputError(f"input {match}: {exc.strerror}") from None
    if not path.is_file():
        raise InputError(f"input {match}: not a file (nor a dataset saved by datasets' save_to_disk)")
    if not os.access(path, os.R_OK):
        raise InputError(f"input {match}: not readable (permission denied)")
    if path.suffix == ".zst":
        _require_zstandard(path)
    item = InputFile(path, stat.st_size, stat.st_mtime_ns)
    if item.kind != "lines":
        from titanenv.data import tables

        tables.pyarrow_modules(path)
    return item


def _require_zstandard(path: Path) -> None:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        raise InputError(f"input {path}: reading .zst needs the zstandard package (pip install zstandard)") from None


@dataclass(frozen=True)
class Chunk:
    """A unit of work: part of one input file.

    ``lines`` (JSONL): bytes ``[start, end)``, ``end`` -1 for the whole of a
    compressed file; ``parquet``: row groups ``[start, end)``, ``nbytes`` of
    text column on disk, the first of them at row ``first_row`` of the file;
    ``arrow``: the whole file (``end`` -1).
    """

    index: int
    path: Path
    start: int
    end: int
    kind: str = "lines"
    nbytes: int = 0
    first_row: int = 0

    @property
    def size(self) -> int:
        """Input bytes (0 where only the file's size tells: ``end`` -1)."""
        if self.kind == "parquet":
            return self.nbytes
        return self.end - self.start if self.end >= 0 else 0

    def to_json(self) -> list:
        if self.kind == "lines":  # as plans before Parquet were written: their runs resume
            return [self.index, str(self.path), self.start, self.end]
        return [self.index, str(self.path), self.start, self.end, self.kind, self.nbytes, self.first_row]

    @classmethod
    def from_json(cls, data: list) -> "Chunk":
        index, path, start, end, *rest = data
        kind, nbytes, first_row = rest if rest else ("lines", 0, 0)
        return cls(int(index), Path(path), int(start), int(end), str(kind), int(nbytes), int(first_row))


def plan_chunks(inputs: list[InputFile], chunk_bytes: int, text_key: str = "text") -> list[Chunk]:
    """Cut every uncompressed JSONL input at the first line end after each ``chunk_bytes``, Parquet
    files into runs of row groups of about ``chunk_bytes`` of ``text_key``; compressed and Arrow files whole."""
    from titanenv.data import tables

    chunks: list[Chunk] = []
    for item in inputs:
        if item.kind == "parquet":
            chunks.extend(tables.plan_parquet(item, len(chunks), chunk_bytes, text_key))
            continue
        if item.kind == "arrow":
            chunks.append(Chunk(len(chunks), item.path, 0, -1, kind="arrow"))
            continue
        if item.compressed:
            chunks.append(Chunk(len(chunks), item.path, 0, -1))
            continue
        with open(item.path, "rb") as handle:
            start = 0
            while start < item.size:
                end = _line_end_after(handle, start + chunk_bytes, item.size)
                chunks.append(Chunk(len(chunks), item.path, start, end))
                start = end
    return chunks


def _line_end_after(handle, position: int, size: int) -> int:
    """The offset just past the first newline at or after ``position`` (or the file size)."""
    if position >= size:
        return size
    handle.seek(position)
    while True:
        block = handle.read(1 << 16)
        if not block:
            return size
        newline = block.find(b"\n")
        if newline >= 0:
            return handle.tell() - len(block) + newline + 1


def slices(chunk: Chunk, slice_bytes: int = SLICE_BYTES) -> Iterator[tuple[int, memoryview, int]]:
    """The chunk's bytes as whole lines, about ``slice_bytes`` at a time: (index of the first line, bytes, lines).

    The bytes are a view into one buffer that is reused for the next slice:
    use them (or copy them with ``bytes()``) before asking for the next one.
    """
    if chunk.end < 0:
        with _open_compressed(chunk.path) as stream:
            yield from _whole_lines(stream.readinto, slice_bytes, None, chunk.path)
        return
    with open(chunk.path, "rb", buffering=0) as handle:
        handle.seek(chunk.start)
        yield from _whole_lines(handle.readinto, slice_bytes, chunk.end - chunk.start, chunk.path)


_BUFFER: list = [None, bytearray()]  # (pid, buffer) of this process; a forked worker makes its own


def _read_buffer(size: int) -> bytearray:
    """This process's read buffer, at least ``size`` bytes: fresh memory costs page faults on every chunk."""
    if _BUFFER[0] != os.getpid() or len(_BUFFER[1]) < size:
        _BUFFER[:] = [os.getpid(), bytearray(size)]
    return _BUFFER[1]


def _whole_lines(readinto, slice_bytes: int, size: int | None, path: Path) -> Iterator[tuple[int, memoryview, int]]:
    """Fill one buffer, hand out its part up to the last newline, move the rest to the front, repeat.

    Reading into the same buffer, instead of a new bytes object per block,
    spares the page faults of fresh memory (a fifth of the reading time).
    ``size``: bytes to read (a byte range), or None: to the end of the stream.
    """
    buffer = _read_buffer(slice_bytes)
    filled = 0  # bytes in the buffer, the carried-over tail first
    remaining = size
    line = 0
    at_end = False
    while not at_end or filled:
        if not at_end:
            if filled == len(buffer):  # a line longer than the buffer: make room
                buffer.extend(bytes(len(buffer)))
            want = len(buffer) - filled if remaining is None else min(len(buffer) - filled, remaining)
            with memoryview(buffer) as view:
                got = readinto(view[filled : filled + want]) or 0
            if remaining is not None:
                if got == 0 and remaining > 0:
                    raise InputError(f"input {path}: shorter than planned (changed while reading?)")
                remaining -= got
                at_end = remaining == 0
            else:
                at_end = got == 0
            filled += got
        cut = filled if at_end else buffer.rfind(b"\n", 0, filled) + 1
        if cut == 0:
            continue
        with memoryview(buffer) as view:
            whole = view[:cut]
            count = count_newlines(whole) + (0 if buffer[cut - 1] == 10 else 1)
            yield line, whole, count
            whole.release()
        line += count
        buffer[: filled - cut] = buffer[cut:filled]
        filled -= cut


_COUNT_BLOCK = 1 << 18


def count_newlines(data: bytes | memoryview) -> int:
    """Newlines in ``data``; three times faster than ``bytes.count``: numpy compares cache-sized blocks in place."""
    if len(data) < _COUNT_BLOCK:
        return bytes(data).count(b"\n")
    array = np.frombuffer(data, dtype=np.uint8)
    scratch = np.empty(_COUNT_BLOCK, dtype=bool)
    count = 0
    for start in range(0, len(array), _COUNT_BLOCK):
        part = array[start : start + _COUNT_BLOCK]
        found = scratch[: len(part)]
        np.equal(part, 10, out=found)
        count += int(np.count_nonzero(found))
    return count


def _open_compressed(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    import zstandard

    return zstandard.open(path, "rb")


def first_line_number(chunk: Chunk) -> int:
    """1-based number of the chunk's first line in its file (counts newlines before it)."""
    if chunk.start <= 0:
        return 1
    count = 0
    with open(chunk.path, "rb") as handle:
        remaining = chunk.start
        while remaining > 0:
            block = handle.read(min(16 << 20, remaining))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count + 1


@dataclass
class Skipped:
    """A skipped line: reason and 0-based line index within its chunk (a row: its index in its file).

    ``keys``: for "no text key", the keys (columns) the line or row has instead.
    """

    reason: str
    line: int
    keys: tuple[str, ...] = ()


def documents(data: bytes, text_key: str, first_line: int = 0) -> tuple[list[str], list[Skipped]]:
    """The texts of the JSON lines in ``data`` and the lines skipped (``first_line``: index of data's first line)."""
    import orjson

    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    loads = orjson.loads
    try:
        texts = [loads(line)[text_key] for line in lines]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        pass
    else:
        if all(type(text) is str and text for text in texts):
            return texts, []
    return _documents_carefully(lines, text_key, first_line)


def _documents_carefully(lines: list[bytes], text_key: str, first_line: int) -> tuple[list[str], list[Skipped]]:
    import orjson

    texts: list[str] = []
    skipped: list[Skipped] = []
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            skipped.append(Skipped("blank line", number))
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(Skipped("invalid UTF-8", number))
            else:
                skipped.append(Skipped("malformed JSON", number))
            continue
        if not isinstance(value, dict):
            skipped.append(Skipped("not a JSON object", number))
        elif text_key not in value:
            skipped.append(Skipped("no text key", number, tuple(value)))
        elif not isinstance(value[text_key], str):
            skipped.append(Skipped("text is not a string", number))
        elif not value[text_key]:
            skipped.append(Skipped("empty text", number))
        else:
            texts.append(value[text_key])
    return texts, skipped
