"""data.preprocess on Parquet and Arrow inputs: the JSONL path's exact bytes, bad rows, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import GPT2, OWT, REPO_ROOT, WIKI, pair_bytes, preprocess, succeeded
from titanenv.data import indexed
from titanenv.data import preprocess as pre

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def texts_of(corpus: Path) -> list[str]:
    return [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]


def write_parquet(path: Path, texts: list, *, row_group_size: int = 97, **columns) -> Path:
    """The texts as a Parquet file of several row groups, beside other columns (only ``text`` is read)."""
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts, **columns}), path,
                   row_group_size=row_group_size)
    return path


def save_to_disk(path: Path, texts: list[str], *, shard: str = "1MB") -> Path:
    """The texts as a dataset saved by ``datasets`` (Arrow stream files, several for the corpus)."""
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"text": text, "n": i} for i, text in enumerate(texts)]).save_to_disk(
        str(path), max_shard_size=shard)
    return path


@pytest.mark.parametrize("backend", ["gigatoken", "hf"])
@pytest.mark.parametrize("corpus", [OWT, WIKI], ids=["owt", "wiki"])
def test_jsonl_parquet_and_arrow_give_the_same_bytes(tmp_path: Path, corpus: Path, backend: str) -> None:
    texts = texts_of(corpus)
    parquet = write_parquet(tmp_path / "corpus.parquet", texts, row_group_size=len(texts) // 8 + 1)
    arrow = save_to_disk(tmp_path / "saved", texts)
    assert len(list(arrow.glob("*.arrow"))) > 1
    outputs = {}
    for name, source in (("jsonl", corpus), ("parquet", parquet), ("arrow", arrow)):
        out = tmp_path / name / "train"
        result = succeeded(preprocess("--input", str(source), "--tokenizer", str(GPT2), "--backend", backend,
                               "--chunk-mb", "1", "--workers", "2", output=out))
        assert "skipped" not in result.stdout
        outputs[name] = pair_bytes(out)
        if name == "parquet":  # several chunks of whole row groups
            assert "in 1 chunk(s)" not in result.stdout
    assert outputs["parquet"] == outputs["jsonl"] == outputs["arrow"]
    assert indexed.IndexedDataset(tmp_path / "parquet" / "train").document_count == len(texts)


def test_parquet_chunks_are_whole_row_groups_and_resume(tmp_path: Path) -> None:
    parquet = write_parquet(tmp_path / "corpus.parquet", texts_of(OWT) * 2)
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(OWT.read_bytes() * 2)
    straight = tmp_path / "straight" / "train"
    succeeded(preprocess("--input", str(twice), "--tokenizer", str(GPT2), output=straight))

    out = tmp_path / "resumed" / "train"
    plan = pre.prepare([str(parquet)], base=REPO_ROOT, tokenizer=str(GPT2), output=out, chunk_bytes=1 << 20)
    groups = pq.ParquetFile(parquet).metadata.num_row_groups
    assert [c.kind for c in plan.chunks] == ["parquet"] * len(plan.chunks) and len(plan.chunks) > 2
    assert [(c.start, c.end) for c in plan.chunks] == list(zip([0] + [c.end for c in plan.chunks[:-1]],
                                                               [c.end for c in plan.chunks]))
    assert plan.chunks[-1].end == groups
    reread = pre.Plan.read(plan.parts_dir / pre.PLAN_NAME)
    assert reread.chunks == plan.chunks
    pre.work(plan, rank=1, ranks=2, workers=1)  # an interrupted parallel job: one rank done
    done = sum(plan.is_done(c) for c in plan.chunks)
    assert 0 < done < len(plan.chunks)

    result = succeeded(preprocess("--input", str(parquet), "--tokenizer", str(GPT2), "--chunk-mb", "1", output=out))
    assert f"resuming: {done} of {len(plan.chunks)} chunk(s) done" in result.stdout
    assert pair_bytes(out) == pair_bytes(straight)


def _arrow_stream(path: Path, table) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    return path


def _invalid_utf8_strings(values: list[bytes]):
    """A string array holding bytes that are not UTF-8, as a careless writer can make one."""
    data = b"".join(values)
    offsets = [0]
    for value in values:
        offsets.append(offsets[-1] + len(value))
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [None, pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]), pa.py_buffer(data)])


@pytest.mark.parametrize("backend", ["gigatoken", "hf"])
def test_bad_rows_are_skipped_and_counted_with_file_and_row(tmp_path: Path, backend: str) -> None:
    rows = tmp_path / "rows.parquet"
    write_parquet(rows, ["first good document", None, "", "last good document"], row_group_size=2)
    other = tmp_path / "keyless.parquet"
    pq.write_table(pa.table({"body": ["no text column"] * 3}), other)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    broken = _arrow_stream(tmp_path / "broken.arrow", pa.table({"text": _invalid_utf8_strings(
        [b"good", b"bad \xff byte", b"fine"])}))

    out = tmp_path / "train"
    result = succeeded(preprocess("--input", f"{rows}:{other}:{numbers}:{broken}", "--tokenizer", str(GPT2),
                           "--backend", backend, "--max-skipped-fraction", "1", output=out))
    assert ("skipped 8 row(s): 1 empty text, 1 invalid UTF-8, 3 no text key, 1 null text, "
            "2 text is not a string") in result.stdout
    for where in (f"{rows}:1: null text", f"{rows}:2: empty text", f"{other}:0: no text key",
                  f"{other}:2: no text key", f"{numbers}:1: text is not a string", f"{broken}:1: invalid UTF-8"):
        assert f"  {where}" in result.stdout
    from titanenv.data.tokenizer import load_tokenizer

    tok = load_tokenizer(GPT2)
    dataset = indexed.IndexedDataset(out)
    assert [tok.decode(dataset[i]) for i in range(dataset.document_count)] == [
        f"{text}<|endoftext|>" for text in ("first good document", "last good document", "good", "fine")
    ]


def test_strict_stops_at_the_first_bad_row(tmp_path: Path) -> None:
    rows = write_parquet(tmp_path / "rows.parquet", ["good", "also good", "", None], row_group_size=3)
    out = tmp_path / "train"
    result = preprocess("--input", str(rows), "--tokenizer", str(GPT2), "--strict", output=out)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {rows}:2: empty text (--strict)"
    assert not indexed.bin_path(out).exists()


@pytest.mark.parametrize("name,expected", [
    ("x.parquet", "not a readable Parquet file"),
    ("x.arrow", "not a readable Arrow file"),
    ("", "not a file (nor a dataset saved by datasets' save_to_disk)"),
], ids=["parquet", "arrow", "directory"])
def test_unreadable_tables_are_one_line(tmp_path: Path, name: str, expected: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    source = folder / name
    if name:
        source.write_text("neither Parquet nor Arrow\n")
    result = preprocess("--input", str(source), "--tokenizer", str(GPT2), output=tmp_path / "out" / "train")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
    assert str(source) in result.stderr


def test_a_dataset_dict_names_its_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a"}]),
                          "test": datasets.Dataset.from_list([{"text": "b"}])}).save_to_disk(str(saved))
    result = preprocess("--input", str(saved), "--tokenizer", str(GPT2), output=tmp_path / "out" / "train")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: input {saved}: a DatasetDict saved by datasets; name one of its "
                                     f"splits: {saved}/train, {saved}/test")
    succeeded(preprocess("--input", str(saved / "train"), "--tokenizer", str(GPT2), output=tmp_path / "out" / "train"))


def test_a_missing_column_fails_naming_the_columns(tmp_path: Path) -> None:
    parquet = write_parquet(tmp_path / "corpus.parquet", texts_of(WIKI))
    arrow = save_to_disk(tmp_path / "saved", texts_of(WIKI))
    for source, columns in ((parquet, "id, text"), (arrow, "n, text")):
        out = tmp_path / f"out-{source.name}" / "train"
        result = preprocess("--input", str(source), "--tokenizer", str(GPT2), "--text-key", "content", output=out)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: {source}") and line.endswith(
            f": no row has column 'content'; the columns are: {columns} (--text-key, data.text_key)")
        assert not out.parent.exists() or not any(out.parent.iterdir())
