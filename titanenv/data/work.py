"""Preprocessing, step 2: tokenize this rank's chunks that are not done yet, with worker processes.

Each chunk becomes a numbered pair ``chunk-NNNNNN.bin/.idx`` written under
temporary names and renamed when complete, then a ``.done`` marker with its
counts (:class:`~titanenv.data.plan.ChunkStats`); chunks that have a marker
are skipped, so an interrupted run resumes. While the workers tokenize, the
parent copies each chunk whose offset has become known into the merged file
(:class:`~titanenv.data.merge.MergedFile`).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np

from titanenv.data import indexed
from titanenv.data.merge import MergedFile
from titanenv.data.plan import (
    EXAMPLES_PER_CHUNK,
    MAX_KEYS,
    ChunkStats,
    Plan,
    PreprocessError,
    copied_path,
    file_system_error,
    interrupted,
    marker_path,
)
from titanenv.data.pool import ForkPool, WorkerDied
from titanenv.data.progress import Counters, Progress
from titanenv.data.sources import Chunk, InputError, Skipped, documents, first_line_number, slices
from titanenv.data.tokenizer import TextTokenizer, load_tokenizer
from titanenv.errors import TitanEnvError
from titanenv.files import write_json_atomic

# Input a worker process tokenizes before a fresh one replaces it (bounds gigatoken's cache).
RECYCLE_BYTES = 1 << 30
# Text encoded before forking the workers (see _warm_up).
WARM_UP_BYTES = 256 << 10


@dataclass
class WorkResult:
    chunks_done: int
    chunks_skipped: int  # already done by an earlier run
    stats: ChunkStats
    seconds: float  # the whole step, tokenizer load and start-up included
    tokenize_seconds: float = 0.0  # from a started tokenizer to the last chunk written


def tokenize_chunk(plan: Plan, tok: TextTokenizer, chunk: Chunk, counters: Counters | None = None,
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


def cpus_available() -> int:
    """CPUs this process may use: Slurm's per-task count, else the affinity mask."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def work(plan: Plan, *, rank: int = 0, ranks: int = 1, workers: int = 0,
         progress: Progress | None = None, tok: TextTokenizer | None = None) -> WorkResult:
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
    # The chunks are this rank's alone (and the output's lock keeps other runs out): temporary
    # files of theirs are left by a run that was killed outright, no one writes them now.
    remove_temporaries(plan, pending)
    cpus = workers or cpus_available()
    workers = min(cpus, len(pending))
    if workers > 1:
        _warm_up(plan, tok, pending[0])
    ready = time.perf_counter()
    counters = Counters()
    if progress is not None:
        progress.start(sum(plan.chunk_bytes(c) for c in pending), counters)
    # Compressed (whole-file, unknown size) chunks first, then in input order,
    # so the merged file's offsets become known early and copying overlaps tokenizing.
    pending.sort(key=lambda c: (c.end >= 0, -plan.chunk_bytes(c) if c.end < 0 else c.index))
    merged = MergedFile(plan, mine)
    try:
        if workers <= 1:
            # One process: gigatoken's threads may use the other CPUs, unless one was asked for.
            for chunk in pending:
                total.add(tokenize_chunk(plan, tok, chunk, counters, threads=cpus > 1))
                merged.copy_ready()
        else:
            _work_in_pool(plan, tok, pending, workers, counters, total, merged)
    finally:
        merged.close()
        if progress is not None:
            progress.stop()
    finished = time.perf_counter()
    return WorkResult(len(pending), len(mine) - len(pending), total, finished - started, finished - ready)


def _work_in_pool(plan: Plan, tok: TextTokenizer, pending: list[Chunk], workers: int,
                  counters: Counters, total: ChunkStats, merged: MergedFile) -> None:
    # fork: workers inherit the loaded tokenizer instead of loading it again.
    # HF tokenizers would otherwise start its own thread pool in every worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    task = functools.partial(_tokenize_in_worker, plan, tok, counters)
    # gigatoken's pre-token cache only grows: a worker is replaced by a fresh
    # fork of this process after about RECYCLE_BYTES of input, bounding it.
    pool = ForkPool(workers, task, start=_start_worker, recycle_after=RECYCLE_BYTES, weight=plan.chunk_bytes)
    try:
        with pool:
            for result in pool.map_unordered(pending):
                if isinstance(result, str):
                    raise PreprocessError(result)
                total.add(result)
                merged.copy_ready()
    except WorkerDied as exc:
        remove_temporaries(plan, pending)
        if exc.by_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the run is being stopped
            raise interrupted(plan.parts_dir) from None
        chunk = exc.item
        raise PreprocessError(
            f"{exc} while tokenizing {chunk.path} [{chunk.start}:{chunk.end}]; "
            f"{plan.parts_dir} keeps the chunks done so far: rerun to resume"
        ) from None
    except BaseException:
        # Every worker has ended (the pool stopped them): what one stopped
        # mid-write left behind (its temporary .bin/.idx) is no one's now.
        remove_temporaries(plan, pending)
        raise


def remove_temporaries(plan: Plan, chunks: Iterable[Chunk]) -> None:
    """Remove the chunk writers' temporary files of ``chunks`` (of any process)."""
    names = set()
    for chunk in chunks:
        prefix = plan.chunk_prefix(chunk)
        names.update((indexed.bin_path(prefix).name, indexed.idx_path(prefix).name))
    for path in plan.parts_dir.glob(".*.tmp-*"):
        target = indexed.temporary_target(path)
        if target is not None and target.name in names:
            path.unlink(missing_ok=True)


# In a worker process: whether it is writing a chunk (see _on_sigterm).
_busy = False


def _start_worker() -> None:
    """Signals to a worker: the parent decides when the pool stops.

    Ctrl-C (SIGINT) reaches the whole process group: only the parent acts on
    it, and stops the pool. SIGTERM (the pool's stop, ``kill`` of the group,
    Slurm's cancel and time limit) ends a worker at once; one that is
    writing a chunk removes its temporary files first.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: object) -> None:
    if _busy:
        raise SystemExit(128 + signum)  # through the chunk writer's clean-up to _tokenize_in_worker
    os._exit(128 + signum)  # idle: it holds nothing but its own pipe


def _tokenize_in_worker(plan: Plan, tok: TextTokenizer, counters: Counters, chunk: Chunk) -> ChunkStats | str:
    """A worker's task: the chunk's counts, or the one-line error that stopped it."""
    global _busy
    try:
        _busy = True
        return tokenize_chunk(plan, tok, chunk, counters)
    except SystemExit as exc:  # stopped: the chunk's files are cleaned up, leave now
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    except TitanEnvError as exc:
        return str(exc)
    except OSError as exc:  # a full disk, a read-only mount: the path and what to do
        return str(file_system_error(exc, plan.parts_dir))
    except Exception as exc:  # keep the parent's report to one line naming the chunk
        return f"{chunk.path} [{chunk.start}:{chunk.end}]: {type(exc).__name__}: {exc}"
    finally:
        _busy = False


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
    tok.encode(texts, parallel=False)
