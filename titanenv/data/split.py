"""data.split: hold out a fraction of an existing dataset's documents, without tokenizing anything again.

Whole documents are copied, token for token, from ``PREFIX.bin``/``.idx``
into two new Megatron datasets, ``TRAIN`` and ``VALID``: the same dtype, a
sequence layout and document index as Megatron-LM writes them, each keeping
the documents in their original order. Which documents are held out is a
seeded choice (``seed``) of ``round(fraction * documents)`` of them, at least
one and never all, so the same input, fraction and seed give the same two
datasets byte for byte. Both are written to temporary names and renamed when
complete (the ``.idx`` last); existing outputs are kept unless ``overwrite``.
Each gets a ``PREFIX.summary.json`` like data.preprocess writes (the
tokenizer and inputs of the source, which documents it holds), so
data.inspect decodes it with the right tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from titanenv.data import indexed
from titanenv.errors import TitanEnvError

# Tokens copied per write: bounds memory on large datasets.
_BLOCK_TOKENS = 1 << 24


class SplitError(TitanEnvError):
    """A dataset cannot be split as asked."""


@dataclass(frozen=True)
class Part:
    prefix: Path
    documents: int
    tokens: int


@dataclass(frozen=True)
class SplitResult:
    source: Path
    train: Part
    valid: Part
    seed: int
    fraction: float

    def lines(self) -> list[str]:
        total = self.train.documents + self.valid.documents
        return [
            f"split {self.source}.bin/.idx ({total:,} documents; seed {self.seed}, valid fraction {self.fraction:g}):",
            f"  train {self.train.prefix}.bin/.idx: {self.train.documents:,} documents, {self.train.tokens:,} tokens",
            f"  valid {self.valid.prefix}.bin/.idx: {self.valid.documents:,} documents, {self.valid.tokens:,} tokens",
        ]


def held_out(documents: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the documents that go to the validation part."""
    if not 0 < fraction < 1:
        raise SplitError(f"--valid-fraction {fraction:g}: must be between 0 and 1 (e.g. 0.05)")
    if documents < 2:
        raise SplitError(f"{documents} document(s) cannot be split into two non-empty parts")
    count = min(max(round(fraction * documents), 1), documents - 1)
    rng = np.random.default_rng([seed, documents])
    return np.sort(rng.choice(documents, size=count, replace=False))


def split(source: Path, train: Path, valid: Path, *, fraction: float, seed: int = 1234,
          overwrite: bool = False) -> SplitResult:
    """Write ``train`` and ``valid`` from ``source``'s documents; see the module docstring."""
    source, train, valid = Path(source), Path(train), Path(valid)
    held_out(2, fraction, seed)  # the fraction's check, before anything is opened
    outputs = {str(p) for p in (train, valid)}
    if len(outputs) < 2 or str(source) in outputs:
        raise SplitError(f"--train-output {train} and --valid-output {valid} must differ from each other "
                         f"and from the input {source}")
    if not overwrite:
        for prefix in (train, valid):
            for path in (indexed.idx_path(prefix), indexed.bin_path(prefix)):
                if path.exists():
                    raise SplitError(f"{path} exists; pass --overwrite to replace it "
                                     "(the old one stays until the new one is complete)")
    dataset = indexed.IndexedDataset(source)
    try:
        problems = dataset.problems()
        if problems:
            raise SplitError(f"{indexed.idx_path(source)}: corrupt ({'; '.join(problems)}); run data.verify")
        chosen = held_out(dataset.document_count, fraction, seed)
        mask = np.zeros(dataset.document_count, dtype=bool)
        mask[chosen] = True
        parts = [_write(dataset, ~mask, train), _write(dataset, mask, valid)]
    finally:
        dataset.close()
    result = SplitResult(source=source, train=parts[0], valid=parts[1], seed=seed, fraction=fraction)
    _write_summaries(result)
    return result


def _write_summaries(result: SplitResult) -> None:
    import json

    from titanenv.data.plan import summary_path
    from titanenv.runs import write_json_atomic

    try:
        made = json.loads(summary_path(result.source).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        made = {}
    for name, part in (("train", result.train), ("valid", result.valid)):
        write_json_atomic(summary_path(part.prefix), {
            "output": str(part.prefix),
            # How the source was made: the same tokens, so the same tokenizer and inputs.
            **{key: made[key] for key in ("tokenizer", "tokenizer_sha256", "eod_id", "dtype", "inputs", "text_key")
               if key in made},
            "split": {"from": str(result.source), "part": name, "valid_fraction": result.fraction,
                      "seed": result.seed},
            "documents": part.documents,
            "tokens": part.tokens,
        })


def _write(dataset: indexed.IndexedDataset, keep: np.ndarray, prefix: Path) -> Part:
    """The documents where ``keep`` is true, with all their sequences, as a new dataset at ``prefix``."""
    doc_bounds = np.asarray(dataset.document_indices, dtype=np.int64)  # sequence range of each document
    lengths = np.asarray(dataset.sequence_lengths, dtype=np.int64)
    token_starts = np.concatenate([[0], np.cumsum(lengths)])
    kept = np.flatnonzero(keep)
    sequences_per_doc = doc_bounds[kept + 1] - doc_bounds[kept]
    # The sequences of the kept documents, in order (one per document from data.preprocess, maybe more elsewhere).
    before = np.cumsum(sequences_per_doc) - sequences_per_doc
    sequence_ids = np.repeat(doc_bounds[kept] - before, sequences_per_doc) + np.arange(int(sequences_per_doc.sum()))
    new_lengths = lengths[sequence_ids]
    new_documents = np.concatenate([[0], np.cumsum(sequences_per_doc)])

    prefix.parent.mkdir(parents=True, exist_ok=True)
    bin_final, idx_final = indexed.bin_path(prefix), indexed.idx_path(prefix)
    bin_tmp, idx_tmp = indexed.temporary_path(bin_final), indexed.temporary_path(idx_final)
    try:
        with open(bin_tmp, "wb") as out:
            # Kept documents come in runs of neighbours: copy each run of tokens at once.
            for first, last in _runs(kept):
                start, end = token_starts[doc_bounds[first]], token_starts[doc_bounds[last + 1]]
                for block in range(int(start), int(end), _BLOCK_TOKENS):
                    piece = dataset.tokens[block : min(block + _BLOCK_TOKENS, int(end))]
                    out.write(memoryview(np.ascontiguousarray(piece)).cast("B"))
        idx_tmp.write_bytes(indexed.index_bytes(dataset.dtype, new_lengths, new_documents))
        indexed.rename_into_place(bin_tmp, bin_final)
        indexed.rename_into_place(idx_tmp, idx_final)
    finally:
        for path in (bin_tmp, idx_tmp):
            path.unlink(missing_ok=True)
    return Part(prefix=prefix, documents=len(kept), tokens=int(new_lengths.sum()))


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs in sorted ``indices`` as (first, last) pairs."""
    if not len(indices):
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1)
    firsts = [int(indices[0]), *(int(indices[b + 1]) for b in breaks)]
    lasts = [*(int(indices[b]) for b in breaks), int(indices[-1])]
    return list(zip(firsts, lasts))
