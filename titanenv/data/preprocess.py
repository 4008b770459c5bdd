"""Tokenize JSONL, Parquet or Arrow into a Megatron-LM indexed dataset, chunk by chunk, resumably.

A run has three steps, each usable on its own so a Slurm job can spread them:

1. :func:`prepare` checks the inputs and the tokenizer, refuses an existing
   output without ``overwrite``, cuts the inputs into chunks and writes the
   plan to ``PREFIX.parts/plan.json`` (or reuses the plan of an unfinished run
   with the same inputs and settings, so a rerun only does what is missing).
2. :func:`work` tokenizes the chunks of one rank (``rank`` of ``ranks``; ranks
   get similar byte counts) with N worker processes. Each chunk becomes a
   numbered pair ``chunk-NNNNNN.bin/.idx`` written under temporary names and
   renamed when complete, then a ``.done`` marker with its counts; chunks
   that have a marker are skipped.
   As soon as every chunk before one is done, its offset in the output is
   known: its tokens are copied into ``PREFIX.parts/merged.bin`` and its
   ``.bin`` removed, while the other chunks are still being tokenized.
3. :func:`merge` copies what is left, writes ``PREFIX.idx`` from the
   chunks' indexes, renames both into place (the index last), writes
   ``PREFIX.summary.json`` and removes the parts. In a Slurm job the rank
   that finishes last merges (:func:`finish_rank`).

The result is byte-identical to Megatron-LM's ``tools/preprocess_data.py
--append-eod`` (one sequence per document) whatever the number of chunks,
workers or ranks, and whether or not the run was interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from titanenv.data import indexed
from titanenv.data.sources import (
    Chunk,
    InputError,
    InputFile,
    Skipped,
    documents,
    first_line_number,
    plan_chunks,
    resolve_inputs,
    slices,
)
from titanenv.data.tokenizer import TextTokenizer, load_tokenizer
from titanenv.errors import FileSystemError, TitanEnvError
from titanenv.files import write_json_atomic

PLAN_NAME = "plan.json"
# In PREFIX.parts: the output's tokens, copied in at their offsets, until the merge renames it.
MERGED_NAME = "merged.bin"
PLAN_FORMAT = 1
MIN_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 256 << 20
# Input a worker process tokenizes before a fresh one replaces it (bounds gigatoken's cache).
RECYCLE_BYTES = 1 << 30
# Locations of skipped lines kept per chunk for the summary (all are counted).
EXAMPLES_PER_CHUNK = 10
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


def lock_output(output: Path, *, token: str = "", job: str = "", echo: Callable[[str], None] = print):
    """The lock on the dataset prefix (``PREFIX.lock``): one writer per output at a time.

    The tasks of one Slurm job share it through its ``token`` (see
    :mod:`titanenv.locks`); anyone else is refused in one line naming the
    holder, and a holder that is gone is taken over, saying so.
    """
    from titanenv import locks

    return locks.acquire(Path(output), what="data.preprocess", token=token, job=job,
                         instead="choose another --output", echo=echo)


def file_system_error(exc: OSError, parts: Path) -> FileSystemError:
    """One line for a failed read or write: the path (else the run's parts directory), the problem, what to do."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return FileSystemError.of(exc, path=None if exc.filename else parts, instead="choose another --output",
                              then="the chunks done so far are kept: rerun to resume" if full else "")


def interrupted(parts: Path) -> PreprocessError:
    return PreprocessError(f"interrupted; {parts} keeps the chunks done so far: run the same command again to resume")


@contextlib.contextmanager
def interruptible():
    """SIGTERM (Slurm's cancel and time limit, ``kill``) stops like Ctrl-C: KeyboardInterrupt, then clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    def chunk_prefix(self, chunk: Chunk) -> Path:
        return self.parts_dir / f"chunk-{chunk.index:06d}"

    def is_done(self, chunk: Chunk) -> bool:
        """Marker present and both files of the sizes it records.

        Chunk files are not flushed to disk one by one (that cost about a
        fifth of the run); a machine that went down before the page cache
        reached the disk leaves short or empty files, which this catches.
        """
        return self.done_marker(chunk) is not None

    def done_marker(self, chunk: Chunk) -> dict | None:
        """The chunk's marker (its ChunkStats) if it is done, else None."""
        prefix = self.chunk_prefix(chunk)
        try:
            marker = json.loads(marker_path(prefix).read_text(encoding="utf-8"))
            tokens, documents = int(marker["tokens"]), int(marker["documents"])
            # Once copied into the merged file, a chunk's .bin is removed (see _Copier).
            bin_ok = ((copied_path(prefix).exists() and (self.parts_dir / MERGED_NAME).exists())
                      or indexed.bin_path(prefix).stat().st_size == tokens * np.dtype(self.settings.dtype).itemsize)
            idx_ok = indexed.idx_path(prefix).stat().st_size == indexed.index_size(documents, documents)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return marker if bin_ok and idx_ok else None

    def assignment(self, rank: int, ranks: int) -> list[Chunk]:
        """The chunks of ``rank``: largest first to the least loaded rank, so ranks get similar bytes."""
        if not 0 <= rank < ranks:
            raise PreprocessError(f"rank {rank} is outside 0..{ranks - 1}")
        loads = [0] * ranks
        mine: list[Chunk] = []
        sizes = {c.index: (c.size if c.end >= 0 else _file_size(self, c.path)) for c in self.chunks}
        for chunk in sorted(self.chunks, key=lambda c: (-sizes[c.index], c.index)):
            target = min(range(ranks), key=lambda r: (loads[r], r))
            loads[target] += sizes[chunk.index]
            if target == rank:
                mine.append(chunk)
        return sorted(mine, key=lambda c: c.index)

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


def _file_size(plan: Plan, path: Path) -> int:
    for item in plan.inputs:
        if item["path"] == str(path):
            return int(item["size"])
    return 0


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def marker_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".done")


def copied_path(prefix: Path) -> Path:
    """Marker: the chunk's tokens are in the merged file (see :class:`_Copier`)."""
    return prefix.with_name(prefix.name + ".copied")


def summary_path(output: Path) -> Path:
    return output.with_name(output.name + ".summary.json")


def auto_chunk_bytes(total: int, workers: int) -> int:
    """About eight chunks per worker, within 1 MiB .. 256 MiB: balance without tiny pieces."""
    return int(min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, total // max(1, 8 * workers))))


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


# --- tokenizing chunks ------------------------------------------------------------


@dataclass
class ChunkStats:
    documents: int = 0
    tokens: int = 0  # including end-of-document tokens
    bytes_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # "file:line: reason"
    keys: list[str] = field(default_factory=list)  # of lines (columns of rows) without the text key


class _Counters:
    """Progress shared between worker processes and the parent (documents, tokens, bytes)."""

    def __init__(self) -> None:
        import multiprocessing

        self.values = multiprocessing.get_context("fork").Array("q", 3, lock=False)

    def add(self, documents: int, tokens: int, nbytes: int) -> None:
        self.values[0] += documents
        self.values[1] += tokens
        self.values[2] += nbytes

    def read(self) -> tuple[int, int, int]:
        return self.values[0], self.values[1], self.values[2]


def tokenize_chunk(plan: Plan, tok: TextTokenizer, chunk: Chunk, counters: _Counters | None = None,
                   threads: bool | None = None) -> ChunkStats:
    """Tokenize one chunk into its numbered pair and marker; returns its counts.

    ``threads``: let gigatoken use its thread pool (None: its own choice,
    which is no in a forked worker).
    """
    stats = ChunkStats()
    skipped: Counter[str] = Counter()
    keys: set[str] = set()
    dtype = np.dtype(plan.settings.dtype)
    prefix = plan.chunk_prefix(chunk)
    copied_path(prefix).unlink(missing_ok=True)  # its bytes in the merged file are stale now
    with indexed.IndexedDatasetWriter(prefix, dtype, durable=False) as writer:
        for (ids, offsets), nbytes in _encoded(plan, tok, chunk, threads, skipped, stats.examples, keys):
            lengths, tokens = with_end_of_document(ids, offsets, tok.eod_id, dtype)
            writer.add_documents(lengths, tokens)
            stats.documents += len(lengths)
            stats.tokens += int(tokens.size)
            stats.bytes_read += nbytes
            if counters is not None:
                counters.add(len(lengths), int(tokens.size), nbytes)
    stats.skipped = dict(skipped)
    stats.keys = sorted(keys)[:MAX_KEYS]
    write_json_atomic(marker_path(prefix), asdict(stats))
    return stats


def _encoded(plan: Plan, tok: TextTokenizer, chunk: Chunk, threads: bool | None, skipped: Counter,
             examples: list[str], keys: set[str]) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], int]]:
    """The chunk's documents encoded, a slice or record batch at a time, with the input bytes each covers."""
    text_key = plan.settings.text_key
    if chunk.kind != "lines":
        from titanenv.data import tables

        for batch in tables.read_texts(chunk, text_key):
            if batch.skipped:
                _record_skips(batch.skipped, chunk, 0, plan.strict, skipped, examples, keys)
            yield tok.encode_arrow(batch.texts, parallel=threads), batch.nbytes
        return
    line_base: int | None = None
    for first, data, lines in slices(chunk):
        encoded = tok.encode_jsonl(data, text_key, lines, parallel=threads)
        if encoded is None:
            texts, bad = documents(bytes(data), text_key, first)
            if bad:
                if line_base is None:
                    line_base = first_line_number(chunk)
                _record_skips(bad, chunk, line_base, plan.strict, skipped, examples, keys)
            encoded = tok.encode(texts)
        yield encoded, len(data)


def with_end_of_document(ids: np.ndarray, offsets: np.ndarray, eod_id: int,
                         dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Documents' lengths and tokens with one end-of-document token after each (``--append-eod``)."""
    count = len(offsets) - 1
    tokens = np.empty(ids.size + count, dtype=dtype)
    ends = offsets[1:] + np.arange(count)
    tokens[ends] = eod_id
    keep = np.ones(tokens.size, dtype=bool)
    keep[ends] = False
    tokens[keep] = ids
    return (np.diff(offsets) + 1).astype(np.int32), tokens


def _record_skips(bad: list[Skipped], chunk: Chunk, line_base: int, strict: bool,
                  counts: Counter, examples: list[str], keys: set[str]) -> None:
    for item in bad:
        where = f"{chunk.path}:{line_base + item.line}"
        if strict:
            raise InputError(f"{where}: {item.reason} (--strict)")
        counts[item.reason] += 1
        if len(examples) < EXAMPLES_PER_CHUNK:
            examples.append(f"{where}: {item.reason}")
        if item.keys and len(keys) < MAX_KEYS:
            keys.update(item.keys)


# Worker-process state, set by fork from the parent.
_WORKER: dict = {}


def _start_worker() -> None:
    """Signals to a worker: the parent decides when the pool stops.

    Ctrl-C (SIGINT) reaches the whole process group: only the parent acts
    on it, and stops the pool. SIGTERM also reaches every process (``kill``
    of the group, Slurm's cancel and time limit); a worker that is writing
    a chunk then removes its temporary files and ends. An idle one waits
    for the parent's stop (the flag ``stopping``): it may be inside the
    pool's task-queue lock, and dying there would leave the pool's shutdown
    waiting for that lock forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_worker)


def _exit_worker(signum: int, frame: object) -> None:
    if _WORKER.get("busy"):
        raise SystemExit(128 + signum)  # through the chunk writer's clean-up to _work_in_child
    if _WORKER["stopping"].value:  # the pool's own stop: its queue lock is the parent's now
        os._exit(128 + signum)


def _work_in_child(chunk: Chunk) -> tuple[int, ChunkStats | str]:
    try:
        _WORKER["busy"] = True
        return chunk.index, tokenize_chunk(_WORKER["plan"], _WORKER["tok"], chunk, _WORKER["counters"])
    except SystemExit as exc:  # stopped by the pool: the chunk's files are cleaned up, leave now
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    except TitanEnvError as exc:
        return chunk.index, str(exc)
    except OSError as exc:  # a full disk, a read-only mount: the path and what to do
        return chunk.index, str(file_system_error(exc, _WORKER["plan"].parts_dir))
    except Exception as exc:  # keep the parent's report to one line naming the chunk
        return chunk.index, f"{chunk.path} [{chunk.start}:{chunk.end}]: {type(exc).__name__}: {exc}"
    finally:
        _WORKER["busy"] = False


def cpus_available() -> int:
    """CPUs this process may use: Slurm's per-task count, else the affinity mask."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


@dataclass
class WorkResult:
    chunks_done: int
    chunks_skipped: int  # already done by an earlier run
    stats: ChunkStats
    seconds: float  # the whole step, tokenizer load and start-up included
    tokenize_seconds: float = 0.0  # from a started tokenizer to the last chunk written


def work(plan: Plan, *, rank: int = 0, ranks: int = 1, workers: int = 0,
         progress: "Progress | None" = None, tok: TextTokenizer | None = None) -> WorkResult:
    """Tokenize this rank's chunks that are not done yet, with ``workers`` processes (0: one per CPU)."""
    started = time.perf_counter()
    mine = plan.assignment(rank, ranks)
    pending = [c for c in mine if not plan.is_done(c)]
    total = ChunkStats()
    if not pending:
        return WorkResult(0, len(mine), total, time.perf_counter() - started)
    tok = tok or load_tokenizer(plan.settings.tokenizer, backend=plan.backend, eod_token=plan.eod_token)
    if tok.eod_id != plan.settings.eod_id or tok.files.fingerprint() != plan.settings.tokenizer_sha256:
        raise PreprocessError(f"tokenizer {tok.files.path} changed since the plan was made; rerun with --overwrite")
    cpus = workers or cpus_available()
    workers = min(cpus, len(pending))
    if workers > 1:
        _warm_up(plan, tok, pending[0])
    ready = time.perf_counter()
    counters = _Counters()
    pending_bytes = sum(c.size if c.end >= 0 else _file_size(plan, c.path) for c in pending)
    if progress is not None:
        progress.start(pending_bytes, counters)
    # Compressed (whole-file, unknown size) chunks first, then in input order,
    # so the merged file's offsets become known early and copying overlaps tokenizing.
    pending.sort(key=lambda c: (c.end >= 0, -_file_size(plan, c.path) if c.end < 0 else c.index))
    copier = _Copier(plan, mine)
    try:
        if workers <= 1:
            # One process: gigatoken's threads may use the other CPUs, unless one was asked for.
            for chunk in pending:
                _add(total, tokenize_chunk(plan, tok, chunk, counters, threads=cpus > 1))
                copier.poll()
        else:
            _work_in_pool(plan, tok, pending, workers, counters, total, copier)
    finally:
        copier.close()
        if progress is not None:
            progress.stop()
    finished = time.perf_counter()
    return WorkResult(len(pending), len(mine) - len(pending), total, finished - started, finished - ready)


class _Copier:
    """Copies this rank's finished chunks into the merged file once every earlier chunk is done.

    A chunk's offset in the merged ``.bin`` is the size of all chunks before
    it; as tokenizing goes on in input order that becomes known for more and
    more chunks, and copying them then (in the parent, while the workers
    tokenize) leaves little for the merge, which copies the rest.
    """

    def __init__(self, plan: Plan, mine: list[Chunk]):
        self.plan = plan
        self.waiting = sorted(c.index for c in mine if not copied_path(plan.chunk_prefix(c)).exists())
        self.known = 0  # chunks [0, known) are done and their offsets known
        self.offsets = [0]
        self.itemsize = np.dtype(plan.settings.dtype).itemsize
        self.descriptor: int | None = None

    def poll(self) -> None:
        chunks = self.plan.chunks
        while self.known < len(chunks) and self.waiting and self.known <= self.waiting[-1]:
            marker = self.plan.done_marker(chunks[self.known])
            if marker is None:
                break
            self.offsets.append(self.offsets[-1] + int(marker["tokens"]) * self.itemsize)
            self.known += 1
        ready = [i for i in self.waiting if i < self.known]
        if not ready:
            return
        if self.descriptor is None:
            self.descriptor = os.open(self.plan.parts_dir / MERGED_NAME, os.O_WRONLY | os.O_CREAT, 0o644)
        for index in ready:
            _copy_chunk(self.plan, chunks[index], self.descriptor, self.offsets[index])
        self.waiting = [i for i in self.waiting if i >= self.known]

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None


def _work_in_pool(plan: Plan, tok: TextTokenizer, pending: list[Chunk], workers: int,
                  counters: _Counters, total: ChunkStats, copier: _Copier) -> None:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    _WORKER.update(plan=plan, tok=tok, counters=counters, stopping=context.Value("b", 0, lock=False))
    # fork: workers inherit the loaded tokenizer instead of loading it again.
    # HF tokenizers would otherwise start its own thread pool in every worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    failure = None
    largest = max(c.size if c.end >= 0 else _file_size(plan, c.path) for c in pending)
    # gigatoken's pre-token cache only grows; a worker is replaced by a fresh
    # fork of this process after about RECYCLE_BYTES of input, bounding it.
    with context.Pool(workers, initializer=_start_worker,
                      maxtasksperchild=max(1, RECYCLE_BYTES // max(largest, 1))) as pool:
        try:
            for _, result in pool.imap_unordered(_work_in_child, pending):
                if isinstance(result, str):
                    failure = result
                    break
                _add(total, result)
                copier.poll()
            else:
                # Every chunk done: the workers leave on the pool's end-of-work message. Stopping
                # them with SIGTERM instead (Pool.__exit__) can lose the signal to a worker that is
                # just going to sleep on the task queue's lock, and the pool then waits for it forever.
                pool.close()
                pool.join()
        finally:
            _WORKER["stopping"].value = 1  # then the pool stops its workers (Pool.__exit__)
    _WORKER.clear()
    if failure:
        # Every worker has ended (the pool joined them): what one stopped
        # mid-write left behind (its temporary .bin/.idx) is no one's now.
        _remove_worker_temporaries(plan.parts_dir)
        raise PreprocessError(failure)


def _remove_worker_temporaries(folder: Path) -> None:
    for path in folder.glob(".chunk-*.tmp-*"):
        pid = path.name.rpartition(".tmp-")[2]
        if pid.isdigit() and int(pid) != os.getpid():
            path.unlink(missing_ok=True)


WARM_UP_BYTES = 256 << 10


def _warm_up(plan: Plan, tok: TextTokenizer, chunk: Chunk) -> None:
    """Encode a little text before forking, so workers inherit a started tokenizer.

    gigatoken sets itself up on its first encode (about 0.4 s here) and
    caches pre-tokens; workers forked after a small encode skip the set-up
    and start with the commonest words cached. Sequential in this process:
    its thread pool must not exist before the fork.
    """
    if tok.backend != "gigatoken":
        return
    if chunk.kind != "lines":
        from titanenv.data import tables

        batches = tables.read_texts(chunk, plan.settings.text_key, WARM_UP_BYTES)
        try:
            batch = next(batches, None)
            if batch is not None:
                tok.encode_arrow(batch.texts, parallel=False)
        finally:
            batches.close()  # the text is used: the file may close
        return
    pieces = slices(chunk, WARM_UP_BYTES)
    first, view, _ = next(pieces, (0, b"", 0))
    data = bytes(view)
    pieces.close()  # hands the read buffer back before anything else reads
    cut = data.rfind(b"\n", 0, WARM_UP_BYTES) + 1
    texts, _ = documents(data[:cut], plan.settings.text_key, first)
    tok._impl.encode_batch(texts, parallel=False)


def _add(total: ChunkStats, part: ChunkStats) -> None:
    total.documents += part.documents
    total.tokens += part.tokens
    total.bytes_read += part.bytes_read
    for reason, count in part.skipped.items():
        total.skipped[reason] = total.skipped.get(reason, 0) + count
    room = 20 - len(total.examples)
    total.examples.extend(part.examples[:max(room, 0)])
    if len(total.keys) < MAX_KEYS:
        total.keys = sorted(set(total.keys) | set(part.keys))[:MAX_KEYS]


# --- merging ------------------------------------------------------------------------


@dataclass
class Summary:
    output: str
    documents: int
    tokens: int
    skipped: dict[str, int]
    examples: list[str]
    bytes_read: int
    bytes_written: int
    dtype: str
    tokenizer: str
    eod_id: int
    chunks: int
    seconds: float = 0.0  # tokenizing, start-up included
    tokenize_seconds: float = 0.0  # tokenizing only (started tokenizer to last chunk)
    merge_seconds: float = 0.0
    unit: str = "line"  # what a skipped record is: see Plan.unit

    def lines(self) -> list[str]:
        rate = self.tokens / self.tokenize_seconds if self.tokenize_seconds > 0 else 0.0
        out = [
            f"wrote {self.output}.bin + .idx: {self.documents:,} documents, {self.tokens:,} tokens ({self.dtype}), "
            f"{_size(self.bytes_written)}",
            f"read {_size(self.bytes_read)} in {self.chunks} chunk(s); "
            + (f"tokenized in {self.tokenize_seconds:.2f} s ({rate / 1e6:.2f} M tokens/s; "
               f"{self.seconds - self.tokenize_seconds:.2f} s start-up), merged in {self.merge_seconds:.2f} s"
               if self.seconds else f"all done earlier, merged in {self.merge_seconds:.2f} s"),
        ]
        skipped = sum(self.skipped.values())
        if skipped:
            by_reason = ", ".join(f"{count:,} {reason}" for reason, count in sorted(self.skipped.items()))
            out.append(f"skipped {skipped:,} {self.unit}(s): {by_reason}")
            out.extend(f"  {example}" for example in self.examples[:10])
        return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def _chunk_offsets(plan: Plan) -> tuple[list[dict], list[int]]:
    """Every chunk's marker, and the byte offset of its tokens in the merged ``.bin``."""
    markers = [plan.done_marker(c) for c in plan.chunks]
    missing = [c for c, marker in zip(plan.chunks, markers) if marker is None]
    if missing:
        raise PreprocessError(
            f"{plan.parts_dir}: {len(missing)} of {len(plan.chunks)} chunk(s) not done "
            f"(first: {missing[0].path}); rerun data.preprocess to finish them"
        )
    itemsize = np.dtype(plan.settings.dtype).itemsize
    offsets = [0]
    for marker in markers:
        offsets.append(offsets[-1] + int(marker["tokens"]) * itemsize)
    return markers, offsets


def _copy_rest(plan: Plan, offsets: list[int]) -> None:
    """Copy the chunks that are not in the merged ``.bin`` yet (the last ones to finish, mostly)."""
    merged = plan.parts_dir / MERGED_NAME
    if not merged.exists():  # copies made into a file that is gone count for nothing
        for chunk in plan.chunks:
            copied_path(plan.chunk_prefix(chunk)).unlink(missing_ok=True)
    rest = [c for c in plan.chunks if not copied_path(plan.chunk_prefix(c)).exists()]
    descriptor = os.open(merged, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in rest:
            _copy_chunk(plan, chunk, descriptor, offsets[chunk.index])
    finally:
        os.close(descriptor)


def _copy_chunk(plan: Plan, chunk: Chunk, descriptor: int, offset: int) -> None:
    """The chunk's tokens into the merged file; then its .bin goes (the data is not kept twice on disk)."""
    prefix = plan.chunk_prefix(chunk)
    indexed.copy_into(indexed.bin_path(prefix), descriptor, offset)
    copied_path(prefix).touch()
    indexed.bin_path(prefix).unlink()


def rejection(plan: Plan, total: ChunkStats) -> str | None:
    """Why the run must not make an output, in one line: no document, or too many skipped; None if it may.

    Names the commonest reason, where it first happened, and for a missing
    key (column) the keys (columns) the input has instead. Blank lines hold
    no document and count toward neither share.
    """
    unit = plan.unit
    skipped = sum(total.skipped.values())
    lost = skipped - total.skipped.get("blank line", 0)
    if total.documents and lost <= plan.max_skipped_fraction * (total.documents + lost):
        return None
    if not skipped:
        names = plan.settings.inputs
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        return f"no document: the input{'s are' if len(names) > 1 else ' is'} empty ({names[0]}{more})"
    reasons = sorted(total.skipped.items(), key=lambda item: (-item[1], item[0]))
    top, count = reasons[0]
    first = {reason: where for where, reason in reversed([_example(e) for e in total.examples])}
    place = first.get(top, "").rpartition(":")[0] or plan.settings.inputs[0]
    key = plan.settings.text_key
    if not total.documents and top == "no text key" and count == lost:
        has = ", ".join(total.keys) or "none"
        if unit == "row":
            return f"{place}: no row has column {key!r}; the columns are: {has} (--text-key, data.text_key)"
        return f"{place}: no {unit} has key {key!r}; {unit}s have: {has} (--text-key, data.text_key)"
    counts = ", ".join(f"{n:,} {reason}" + (f" (first: {first[reason]})" if reason in first else "")
                       for reason, n in reasons)
    if top == "no text key" and total.keys:
        counts += f"; {unit}s without key {key!r} have: {', '.join(total.keys)}"
    if not total.documents:
        return f"{place}: no document in {skipped:,} {unit}(s): {counts}"
    share = lost / (total.documents + lost)
    return (f"skipped {lost:,} of {total.documents + lost:,} {unit}s ({share:.1%}), more than "
            f"data.max_skipped_fraction {plan.max_skipped_fraction:g} (--max-skipped-fraction): {counts}")


def _example(example: str) -> tuple[str, str]:
    """``FILE:LINE: reason`` as (``FILE:LINE``, reason)."""
    where, _, reason = example.rpartition(": ")
    return where, reason


def merge(plan: Plan, *, result: WorkResult | None = None) -> Summary:
    """Join every chunk's pair, in input order, into the output; remove the parts.

    The tokens go into one file at offsets known from the chunks' markers
    (what the workers' copier has not copied yet is copied here), then the
    index is written from the chunks' sequence lengths and both are renamed
    into place, the index last. Not flushed to disk first (as Megatron's
    tools do not): that cost a second per GB here, the output can be made
    again from its inputs, the renames keep a crash of this job from
    leaving a half-written output, and ``data.verify`` checks a pair.
    """
    started = time.perf_counter()
    markers, offsets = _chunk_offsets(plan)
    total = ChunkStats()
    for marker in markers:
        _add(total, ChunkStats(**marker))
    problem = rejection(plan, total)
    if problem:
        if total.documents:  # sound chunks: a rerun with a larger fraction merges them at once
            (plan.parts_dir / REJECTED_NAME).write_text(problem + "\n", encoding="utf-8")
            problem += (f"; {plan.parts_dir} keeps the chunks: rerun with a larger --max-skipped-fraction to "
                        "accept them, or with other options to start over")
        else:  # nothing worth keeping; a rerun starts afresh, whatever its options
            shutil.rmtree(plan.parts_dir, ignore_errors=True)
        raise PreprocessError(problem)
    _copy_rest(plan, offsets)  # also creates the file where no chunk holds a document
    merged = plan.parts_dir / MERGED_NAME
    output = Path(plan.settings.output)
    dtype = np.dtype(plan.settings.dtype)
    os.truncate(merged, offsets[-1])
    lengths = [indexed.sequence_lengths(plan.chunk_prefix(c)) for c in plan.chunks]
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
    index = plan.parts_dir / "merged.idx"
    try:
        index.write_bytes(indexed.index_bytes(dtype, lengths_all, np.arange(len(lengths_all) + 1, dtype=np.int64)))
        os.replace(merged, indexed.bin_path(output))
        os.replace(index, indexed.idx_path(output))
    except BaseException:
        index.unlink(missing_ok=True)
        raise
    summary = Summary(
        output=str(output),
        documents=total.documents,
        tokens=total.tokens,
        skipped=total.skipped,
        examples=total.examples,
        bytes_read=total.bytes_read,
        bytes_written=indexed.bin_path(output).stat().st_size + indexed.idx_path(output).stat().st_size,
        dtype=plan.settings.dtype,
        tokenizer=plan.settings.tokenizer,
        eod_id=plan.settings.eod_id,
        chunks=len(plan.chunks),
        seconds=result.seconds if result else 0.0,
        tokenize_seconds=result.tokenize_seconds if result else 0.0,
        unit=plan.unit,
    )
    record = {**asdict(summary), "inputs": plan.settings.inputs, "text_key": plan.settings.text_key,
              "tokenizer_sha256": plan.settings.tokenizer_sha256}
    shutil.rmtree(plan.parts_dir, ignore_errors=True)
    summary.merge_seconds = record["merge_seconds"] = time.perf_counter() - started
    write_json_atomic(summary_path(output), record)
    return summary


# --- progress -------------------------------------------------------------------------


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

    def start(self, total_bytes: int, counters: _Counters) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(total_bytes, counters), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, total_bytes: int, counters: _Counters) -> None:
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
                f"{self.label}: {_size(nbytes)} of {_size(total_bytes)}{share}, {docs:,} documents, "
                f"{tokens:,} tokens, {tokens / elapsed / 1e6:.2f} M tokens/s"
            )


def run(plan: Plan, *, workers: int = 0, progress: Progress | None = None,
        tok: TextTokenizer | None = None) -> Summary:
    """Every chunk here (rank 0 of 1), then merge: the whole job in one process tree."""
    result = work(plan, workers=workers, progress=progress, tok=tok)
    return merge(plan, result=result if result.chunks_done else None)


def finish_rank(plan: Plan, result: WorkResult, *, rank: int, ranks: int, job: str) -> Summary | None:
    """Record this rank of job ``job`` as finished; the last one to finish merges (and returns the Summary).

    So the whole parallel job is one Slurm step: no merge step to start
    once every task is done. The last rank to create its flag sees all of
    them; an exclusive claim file keeps two ranks that finish at the same
    moment from both merging. A rank that fails never flags, nobody
    merges, and the job fails; a rerun resumes.
    """
    flags = plan.parts_dir / f"finished-{job}"
    flags.mkdir(exist_ok=True)
    (flags / str(rank)).touch()
    if sum(1 for p in flags.iterdir() if p.name.isdigit()) < ranks:
        return None
    try:
        os.close(os.open(flags / "merging", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return None
    return merge(plan, result=result)


def slurm_rank() -> tuple[int, int]:
    """This task's rank and the number of ranks from Slurm (0 of 1 outside a job)."""
    def number(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() else default

    return number("SLURM_PROCID", 0), number("SLURM_NTASKS", 1)


def slurm_job() -> str:
    """This Slurm job's id (its array task's too), or ``here`` outside a job."""
    job = os.environ.get("SLURM_JOB_ID", "")
    return f"{job}.{os.environ['SLURM_ARRAY_TASK_ID']}" if job and "SLURM_ARRAY_TASK_ID" in os.environ else job or "here"


def describe_assignment(plan: Plan, ranks: int) -> Iterable[str]:
    for rank in range(ranks):
        mine = plan.assignment(rank, ranks)
        yield f"rank {rank}: {len(mine)} chunk(s), {_size(sum(c.size for c in mine))}"


__all__ = [
    "ChunkStats", "InputFile", "Plan", "PreprocessError", "Progress", "Settings", "Summary",
    "merge", "prepare", "rejection", "run", "slurm_rank", "tokenize_chunk", "work",
]
