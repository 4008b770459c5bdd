"""data.inspect and data.verify: what a .bin/.idx pair holds, and whether it is consistent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from titanenv.config import Config
from titanenv.data import indexed
from titanenv.data.plan import summary_path


def verify(prefix: Path) -> str:
    """One line describing a consistent pair; raises IndexedDatasetError naming the problem otherwise."""
    dataset = indexed.IndexedDataset(prefix)  # checks header, sizes and the data file's length
    problems = dataset.problems()
    if problems:
        raise indexed.IndexedDatasetError(f"{indexed.idx_path(prefix)}: {'; '.join(problems)}")
    summary = f"ok {prefix}: {dataset.document_count:,} documents, {dataset.num_tokens:,} tokens, {dataset.dtype.name}"
    dataset.close()
    return summary


def describe(config: Config, *, document: int = 0, chars: int = 500, tokenizer_given: bool = False) -> Iterator[str]:
    """Counts, dtype and largest id of the configured dataset, then one document decoded."""
    import numpy as np

    from titanenv.data.tokenizer import load_tokenizer

    prefix = config.expand_path(config.settings.data.output, "data.output")
    dataset = indexed.IndexedDataset(prefix)
    yield f"dataset: {prefix}.bin/.idx"
    yield f"documents: {dataset.document_count:,}  sequences: {len(dataset):,}  tokens: {dataset.num_tokens:,}"
    largest = int(dataset.tokens.max()) if dataset.num_tokens else -1
    yield f"dtype: {dataset.dtype.name}  largest id: {largest} (a model needs a vocabulary of at least {largest + 1:,})"
    if len(dataset):
        lengths = dataset.sequence_lengths
        yield f"document length: min {int(lengths.min()):,}, mean {float(lengths.mean()):,.1f}, max {int(lengths.max()):,}"
    made = _made_with(prefix)
    if made:
        yield f"made from {len(made.get('inputs', []))} input(s) with {made.get('tokenizer')}"
    if not len(dataset):
        return
    if not -len(dataset) <= document < len(dataset):
        raise indexed.IndexedDatasetError(f"--document {document}: the dataset has {len(dataset)} documents")
    path = config.expand_path(config.settings.data.tokenizer, "data.tokenizer")
    if made and not tokenizer_given and made.get("tokenizer"):
        path = Path(made["tokenizer"])
    tokenizer = load_tokenizer(path)
    tokens = np.asarray(dataset[document])
    text = tokenizer.decode(tokens)
    shown = text if len(text) <= chars else text[:chars] + f"... [{len(text) - chars:,} more characters]"
    yield f"document {document} ({tokens.size:,} tokens, decoded with {path}):"
    yield shown


def _made_with(prefix: Path) -> dict | None:
    try:
        return json.loads(summary_path(prefix).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
