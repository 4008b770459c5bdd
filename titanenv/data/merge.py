"""Preprocessing, step 3: the chunks' tokens into one file at their offsets, the index, the output in place.

A chunk's offset in the merged ``.bin`` is the size of the tokens of all
chunks before it, known as soon as they are done. :class:`MergedFile`
copies each chunk there once it is: during tokenizing (in the parent, while
the workers go on) and, for what is left, in :func:`merge`, which then
writes the index and renames both into place.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from titanenv.data import indexed
from titanenv.data.plan import (
    MERGED_NAME,
    REJECTED_NAME,
    ChunkStats,
    Plan,
    PreprocessError,
    copied_path,
    summary_path,
)
from titanenv.data.sources import Chunk
from titanenv.files import human_size, write_json_atomic

if TYPE_CHECKING:
    from titanenv.data.work import WorkResult


class MergedFile:
    """``PREFIX.parts/merged.bin``, and which of ``chunks`` are copied into it.

    ``offsets[i]`` is where chunk ``i``'s tokens begin, known for chunks
    ``[0, known]``; once known, a chunk of ours is copied there, marked
    ``.copied``, and its ``.bin`` removed (the data is not kept twice on disk).
    """

    def __init__(self, plan: Plan, chunks: list[Chunk]):
        self.plan = plan
        self.path = plan.parts_dir / MERGED_NAME
        if not self.path.exists():  # copies made into a file that is gone count for nothing
            for chunk in chunks:
                copied_path(plan.chunk_prefix(chunk)).unlink(missing_ok=True)
        self.waiting = sorted(c.index for c in chunks if not copied_path(plan.chunk_prefix(c)).exists())
        self.known = 0  # chunks [0, known) are done and their offsets known
        self.offsets = [0]
        self.descriptor: int | None = None

    def learn_offsets(self, markers: list[ChunkStats | None] | None = None) -> None:
        """Extend the known offsets over the done chunks that follow them (``markers``: read them here)."""
        chunks = self.plan.chunks
        while self.known < len(chunks):
            marker = markers[self.known] if markers is not None else self.plan.done_marker(chunks[self.known])
            if marker is None:
                break
            self.offsets.append(self.offsets[-1] + self.plan.token_bytes(marker))
            self.known += 1

    def copy_ready(self) -> None:
        """Copy every chunk of ours whose offset is known (or has become known) and that is not copied yet."""
        if self.waiting and self.known <= self.waiting[-1]:
            self.learn_offsets()
        ready = [i for i in self.waiting if i < self.known]
        if not ready:
            return
        descriptor = self.open()
        for index in ready:
            prefix = self.plan.chunk_prefix(self.plan.chunks[index])
            indexed.copy_into(indexed.bin_path(prefix), descriptor, self.offsets[index])
            copied_path(prefix).touch()
            indexed.bin_path(prefix).unlink()
        self.waiting = [i for i in self.waiting if i >= self.known]

    def open(self) -> int:
        if self.descriptor is None:
            self.descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        return self.descriptor

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None


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
            f"{human_size(self.bytes_written)}",
            f"read {human_size(self.bytes_read)} in {self.chunks} chunk(s); "
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


def merge(plan: Plan, *, result: "WorkResult | None" = None) -> Summary:
    """Join every chunk's pair, in input order, into the output; remove the parts.

    The tokens go into one file at offsets known from the chunks' markers
    (what was not copied during tokenizing is copied here), then the index
    is written from the chunks' sequence lengths and both are renamed into
    place, the index last. Not flushed to disk first (as Megatron's tools do
    not): that cost a second per GB here, the output can be made again from
    its inputs, the renames keep a crash of this job from leaving a
    half-written output, and ``data.verify`` checks a pair.
    """
    started = time.perf_counter()
    markers = [plan.done_marker(c) for c in plan.chunks]
    missing = [c for c, marker in zip(plan.chunks, markers) if marker is None]
    if missing:
        raise PreprocessError(
            f"{plan.parts_dir}: {len(missing)} of {len(plan.chunks)} chunk(s) not done "
            f"(first: {missing[0].path}); rerun data.preprocess to finish them"
        )
    total = ChunkStats()
    for marker in markers:
        total.add(marker)
    problem = rejection(plan, total)
    if problem:
        if total.documents:  # sound chunks: a rerun with a larger fraction merges them at once
            (plan.parts_dir / REJECTED_NAME).write_text(problem + "\n", encoding="utf-8")
            problem += (f"; {plan.parts_dir} keeps the chunks: rerun with a larger --max-skipped-fraction to "
                        "accept them, or with other options to start over")
        else:  # nothing worth keeping; a rerun starts afresh, whatever its options
            shutil.rmtree(plan.parts_dir, ignore_errors=True)
        raise PreprocessError(problem)
    merged = MergedFile(plan, plan.chunks)
    merged.learn_offsets(markers)
    try:
        merged.open()  # also where no chunk holds a document
        merged.copy_ready()
    finally:
        merged.close()
    output = Path(plan.settings.output)
    os.truncate(merged.path, merged.offsets[-1])
    lengths = [indexed.sequence_lengths(plan.chunk_prefix(c)) for c in plan.chunks]
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
    index = plan.parts_dir / "merged.idx"
    try:
        index.write_bytes(indexed.index_bytes(np.dtype(plan.settings.dtype), lengths_all,
                                              np.arange(len(lengths_all) + 1, dtype=np.int64)))
        os.replace(merged.path, indexed.bin_path(output))
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


def finish_rank(plan: Plan, result: "WorkResult", *, rank: int, ranks: int, job: str) -> Summary | None:
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
