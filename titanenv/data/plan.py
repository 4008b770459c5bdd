"""Preprocessing, step 1: check the inputs and settings, cut them into chunks, write the plan.

The plan (``PREFIX.parts/plan.json``) is the one record of a run: its
settings, its inputs as they were, and its chunks. Every later step reads
it; a rerun with the same inputs and settings reuses it and does only what
is missing. The layout of ``PREFIX.parts`` and the chunks' ``.done``
markers (:class:`ChunkStats`) are defined here too, with the two numbers
every step needs: a chunk's input bytes and the size of its tokens.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np

from titanenv.data import indexed
from titanenv.data.sources import Chunk, plan_chunks, resolve_inputs
from titanenv.data.tokenizer import TextTokenizer, load_tokenizer
from titanenv.errors import FileSystemError, TitanEnvError
from titanenv.files import human_size, write_json_atomic

PLAN_NAME = "plan.json"
# In PREFIX.parts: the output's tokens, copied in at their offsets, until the merge renames it.
MERGED_NAME = "merged.bin"
PLAN_FORMAT = 1
MIN_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 256 << 20
# Locations of skipped lines kept per chunk for the summary (all are counted).
EXAMPLES_PER_CHUNK = 10
# ... and for the whole run.
EXAMPLES_PER_RUN = 20
# Keys of lines without the text key kept per chunk, to name them when no line has it.
MAX_KEYS = 20
# data.max_skipped_fraction's default: a run that skips more of its lines or rows fails.
# A sound corpus loses next to nothing (a stray empty text); a wrong --text-key, a file of
# another format or a damaged one loses a large share. 1% lets the strays through and stops
# a run that would silently train on a corpus with a hole in it. Blank lines hold no
# document and do not count.
MAX_SKIPPED_FRACTION = 0.01
# In PREFIX.parts: the error of a run whose skipped lines failed the check (see merge).
REJECTED_NAME = "rejected"


class PreprocessError(TitanEnvError):
    """Preprocessing cannot start, go on, or finish."""


def file_system_error(exc: OSError, parts: Path) -> FileSystemError:
    """One line for a failed read or write: the path (else the run's parts directory), the problem, what to do."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return FileSystemError.of(exc, path=None if exc.filename else parts, instead="choose another --output",
                              then="the chunks done so far are kept: rerun to resume" if full else "")


def interrupted(parts: Path) -> PreprocessError:
    return PreprocessError(f"interrupted; {parts} keeps the chunks done so far: run the same command again to resume")


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def marker_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".done")


def copied_path(prefix: Path) -> Path:
    """Marker: the chunk's tokens are in the merged file (see :class:`titanenv.data.merge.MergedFile`)."""
    return prefix.with_name(prefix.name + ".copied")


def summary_path(output: Path) -> Path:
    return output.with_name(output.name + ".summary.json")


def auto_chunk_bytes(total: int, workers: int) -> int:
    """About eight chunks per worker, within 1 MiB .. 256 MiB: balance without tiny pieces."""
    return int(min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, total // max(1, 8 * workers))))


@dataclass
class ChunkStats:
    """What a chunk (or a whole run) holds: the content of a chunk's ``.done`` marker."""

    documents: int = 0
    tokens: int = 0  # including end-of-document tokens
    bytes_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # "file:line: reason"
    keys: list[str] = field(default_factory=list)  # of lines (columns of rows) without the text key

    def add(self, part: "ChunkStats") -> None:
        """Count ``part`` in too (a run's totals from its chunks')."""
        self.documents += part.documents
        self.tokens += part.tokens
        self.bytes_read += part.bytes_read
        for reason, count in part.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        room = EXAMPLES_PER_RUN - len(self.examples)
        self.examples.extend(part.examples[:max(room, 0)])
        if len(self.keys) < MAX_KEYS:
            self.keys = sorted(set(self.keys) | set(part.keys))[:MAX_KEYS]


@dataclass(frozen=True)
class Settings:
    """What decides the output: a resumed run must have the same."""

    inputs: list[str]
    text_key: str
    tokenizer: str
    tokenizer_sha256: str
    eod_id: int
    dtype: str
    output: str


@dataclass
class Plan:
    settings: Settings
    chunks: list[Chunk]
    inputs: list[dict]  # path, size, mtime_ns
    backend: str = "auto"
    eod_token: str = ""
    strict: bool = False
    max_skipped_fraction: float = MAX_SKIPPED_FRACTION

    @property
    def parts_dir(self) -> Path:
        return parts_dir(Path(self.settings.output))

    @property
    def unit(self) -> str:
        """What a skipped record is called: a line (JSONL), a row (Parquet, Arrow), or either."""
        kinds = {c.kind == "lines" for c in self.chunks}
        return "line" if kinds == {True} else "row" if kinds == {False} else "line or row"

    @property
    def total_bytes(self) -> int:
        return sum(item["size"] for item in self.inputs)

    @cached_property
    def _input_sizes(self) -> dict[str, int]:
        return {item["path"]: int(item["size"]) for item in self.inputs}

    def chunk_bytes(self, chunk: Chunk) -> int:
        """The input bytes a chunk covers: its range, or its whole file's size (compressed, Arrow)."""
        if chunk.end >= 0:
            return chunk.size
        return self._input_sizes.get(str(chunk.path), 0)

    def token_bytes(self, stats: ChunkStats) -> int:
        """The size of a chunk's tokens in the ``.bin``: what its successors' offsets add up."""
        return stats.tokens * np.dtype(self.settings.dtype).itemsize

    def chunk_prefix(self, chunk: Chunk) -> Path:
        return self.parts_dir / f"chunk-{chunk.index:06d}"

    def is_done(self, chunk: Chunk) -> bool:
        return self.done_marker(chunk) is not None

    def done_marker(self, chunk: Chunk) -> ChunkStats | None:
        """The chunk's marker if it is done (marker present, both files of the sizes it records), else None.

        Chunk files are not flushed to disk one by one (that cost about a
        fifth of the run); a machine that went down before the page cache
        reached the disk leaves short or empty files, which this catches.
        """
        prefix = self.chunk_prefix(chunk)
        try:
            stats = ChunkStats(**json.loads(marker_path(prefix).read_text(encoding="utf-8")))
            stats.tokens, stats.documents = int(stats.tokens), int(stats.documents)
            # Once copied into the merged file, a chunk's .bin is removed (see merge.MergedFile).
            bin_ok = ((copied_path(prefix).exists() and (self.parts_dir / MERGED_NAME).exists())
                      or indexed.bin_path(prefix).stat().st_size == self.token_bytes(stats))
            idx_ok = indexed.idx_path(prefix).stat().st_size == indexed.index_size(stats.documents, stats.documents)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return stats if bin_ok and idx_ok else None

    def assignment(self, rank: int, ranks: int) -> list[Chunk]:
        """The chunks of ``rank``: largest first to the least loaded rank, so ranks get similar bytes."""
        if not 0 <= rank < ranks:
            raise PreprocessError(f"rank {rank} is outside 0..{ranks - 1}")
        loads = [0] * ranks
        mine: list[Chunk] = []
        for chunk in sorted(self.chunks, key=lambda c: (-self.chunk_bytes(c), c.index)):
            target = min(range(ranks), key=lambda r: (loads[r], r))
            loads[target] += self.chunk_bytes(chunk)
            if target == rank:
                mine.append(chunk)
        return sorted(mine, key=lambda c: c.index)

    def describe_assignment(self, ranks: int) -> Iterable[str]:
        for rank in range(ranks):
            mine = self.assignment(rank, ranks)
            yield f"rank {rank}: {len(mine)} chunk(s), {human_size(sum(self.chunk_bytes(c) for c in mine))}"

    def to_json(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "settings": asdict(self.settings),
            "inputs": self.inputs,
            "chunks": [c.to_json() for c in self.chunks],
            "backend": self.backend,
            "eod_token": self.eod_token,
            "strict": self.strict,
            "max_skipped_fraction": self.max_skipped_fraction,
        }

    @classmethod
    def read(cls, path: Path) -> "Plan":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != PLAN_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(
                settings=Settings(**data["settings"]),
                chunks=[Chunk.from_json(c) for c in data["chunks"]],
                inputs=data["inputs"],
                backend=data["backend"],
                eod_token=data["eod_token"],
                strict=data["strict"],
                max_skipped_fraction=float(data.get("max_skipped_fraction", MAX_SKIPPED_FRACTION)),
            )
        except FileNotFoundError:
            raise PreprocessError(f"{path}: no such plan; run data.preprocess to make one") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PreprocessError(f"{path}: not a preprocessing plan ({exc})") from None


def prepare(
    inputs: list[str],
    *,
    base: Path,
    tokenizer: str,
    output: Path,
    text_key: str = "text",
    backend: str = "auto",
    eod_token: str = "",
    chunk_bytes: int | None = None,
    workers: int = 1,
    strict: bool = False,
    max_skipped_fraction: float = MAX_SKIPPED_FRACTION,
    overwrite: bool = False,
    loaded: TextTokenizer | None = None,
    write: bool = True,
) -> Plan:
    """Check everything, then write (or reuse) the plan of a run; nothing else is touched.

    ``write=False`` (dry runs) computes the plan and writes nothing. The
    parts of a run whose skipped lines failed its check are replaced by a run
    with other settings (a fixed --text-key) without ``overwrite``; with the
    same settings they are reused (a larger ``max_skipped_fraction`` accepts
    them at once).
    """
    if not 0 <= max_skipped_fraction <= 1:
        raise PreprocessError(f"data.max_skipped_fraction {max_skipped_fraction:g}: give a fraction from 0 to 1")
    files = resolve_inputs(inputs, base)
    tok = loaded or load_tokenizer(tokenizer, backend=backend, eod_token=eod_token)
    output = Path(output)
    existing = [p for p in (indexed.bin_path(output), indexed.idx_path(output)) if p.exists()]
    if existing and not overwrite:
        raise PreprocessError(f"{existing[0]} exists; pass --overwrite to replace it (the old one stays until the new one is complete)")
    if output.exists() and output.is_dir():
        raise PreprocessError(f"output prefix {output} is a directory; name a file prefix inside it, e.g. {output}/train")
    settings = Settings(
        inputs=[str(f.path) for f in files],
        text_key=text_key,
        tokenizer=str(tok.files.path),
        tokenizer_sha256=tok.files.fingerprint(),
        eod_id=tok.eod_id,
        dtype=indexed.optimal_dtype(tok.vocab_size).name,
        output=str(output),
    )
    described = [{"path": str(f.path), "size": f.size, "mtime_ns": f.mtime_ns} for f in files]
    parts = parts_dir(output)
    if parts.is_symlink() or (parts.exists() and not parts.is_dir()):
        # Never followed: the merge renames files out of it, which a link to
        # another file system would break, and --overwrite must not empty a
        # directory this run did not make.
        kind = f"a symbolic link to {os.readlink(parts)}" if parts.is_symlink() else "not a directory"
        if not overwrite:
            raise PreprocessError(
                f"{parts} is {kind}; data.preprocess keeps a run's parts in a directory of its own beside the "
                "output: remove it, or pass --overwrite to replace it (a link's target is left alone)"
            )
        if write:
            parts.unlink()
    plan_file = parts / PLAN_NAME
    if plan_file.exists():
        if overwrite:
            if write:
                shutil.rmtree(parts)
        else:
            old = Plan.read(plan_file)
            if old.settings == settings and old.inputs == described:
                old.backend, old.eod_token, old.strict = backend, eod_token, strict
                old.max_skipped_fraction = max_skipped_fraction
                if write:
                    write_json_atomic(plan_file, old.to_json())
                return old
            if not (parts / REJECTED_NAME).exists():
                raise PreprocessError(
                    f"{parts} holds an unfinished run with other inputs or settings; "
                    "pass --overwrite to start over"
                )
            if write:  # a run that failed its check, made again with other settings
                shutil.rmtree(parts)
    size = chunk_bytes or auto_chunk_bytes(sum(f.size for f in files), workers)
    plan = Plan(settings=settings, chunks=plan_chunks(files, size, text_key), inputs=described,
                backend=backend, eod_token=eod_token, strict=strict, max_skipped_fraction=max_skipped_fraction)
    if write:
        parts.mkdir(parents=True, exist_ok=True)
        write_json_atomic(plan_file, plan.to_json())
    return plan
