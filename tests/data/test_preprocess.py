"""data.preprocess on the shared corpus: Megatron-LM's exact bytes, both backends, resume, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (GPT2, NEOX, OWT, REPO_ROOT, WIKI, corpus_and_reference, pair_bytes, preprocess,
                           preprocess_mib_chunks, run_invoke, succeeded)
from titanenv.data import indexed
from titanenv.data import preprocess as pre

@pytest.fixture(scope="module")
def megatron_reference(tmp_path_factory: pytest.TempPathFactory):
    """What Megatron-LM's preprocess_data.py --append-eod writes, through megatron-core's own builder.

    The encode step is tools/preprocess_data.py's Encoder.encode for one JSON
    key without sentence splitting: json.loads, tokenize, append eod to the
    document, IndexedDatasetBuilder.add_document per line. HF ``tokenizers``
    tokenizes (the ids Megatron's GPT-2 and HF tokenizers produce).
    """
    builder_module = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    from tokenizers import Tokenizer

    made: dict[tuple[str, str], Path] = {}

    def reference(corpus: Path, tokenizer: Path) -> Path:
        key = (str(corpus), str(tokenizer))
        if key in made:
            return made[key]
        hf = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
        eod = hf.token_to_id("<|endoftext|>")
        vocab_size = hf.get_vocab_size(with_added_tokens=True)
        prefix = tmp_path_factory.mktemp("megatron") / "ref"
        builder = builder_module.IndexedDatasetBuilder(
            f"{prefix}.bin", dtype=builder_module.DType.optimal_dtype(vocab_size)
        )
        with open(corpus, encoding="utf-8") as lines:
            for line in lines:
                text = json.loads(line)["text"]
                doc_ids = hf.encode(text, add_special_tokens=False).ids
                sentence_lens = [len(doc_ids)] if doc_ids else []
                if doc_ids:
                    doc_ids.append(eod)
                    sentence_lens[-1] += 1
                builder.add_document(doc_ids, sentence_lens)
        builder.finalize(f"{prefix}.idx")
        made[key] = prefix
        return prefix

    return reference


@pytest.mark.parametrize("corpus,tokenizer", [(OWT, GPT2), (WIKI, NEOX)], ids=["owt-gpt2", "wiki-neox"])
def test_byte_identical_to_megatron_with_many_chunks_and_workers(
    tmp_path: Path, megatron_reference, corpus: Path, tokenizer: Path
) -> None:
    out = tmp_path / "out" / "train"
    result = succeeded(preprocess("--input", str(corpus), "--tokenizer", str(tokenizer), "--chunk-mb", "1",
                           "--workers", "2", output=out))
    plan_chunks = -(-corpus.stat().st_size // (1 << 20))
    assert f"in {plan_chunks} chunk(s)" in result.stdout
    assert pair_bytes(out) == pair_bytes(megatron_reference(corpus, tokenizer))
    # Megatron reads it back: same documents.
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronDataset

    theirs = MegatronDataset(str(out), mmap=True)
    ours = indexed.IndexedDataset(out)
    assert len(theirs) == len(ours) == sum(1 for _ in open(corpus, encoding="utf-8"))
    for i in (0, len(ours) // 2, len(ours) - 1):
        assert theirs[i].tolist() == ours[i].tolist()
    assert not pre.parts_dir(out).exists()


@pytest.mark.parametrize("corpus,tokenizer", [(OWT, GPT2), (OWT, NEOX), (WIKI, GPT2), (WIKI, NEOX)])
def test_gigatoken_and_hf_backends_give_the_same_bytes(tmp_path: Path, corpus: Path, tokenizer: Path) -> None:
    outputs = []
    for backend in ("gigatoken", "hf"):
        out = tmp_path / backend / "train"
        result = succeeded(preprocess("--input", str(corpus), "--tokenizer", str(tokenizer), "--backend", backend,
                               "--workers", "2", output=out))
        assert "skipped" not in result.stdout
        outputs.append(pair_bytes(out))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0]) > 1_000_000


def test_vocab_and_merges_read_like_tokenizer_json(tmp_path: Path) -> None:
    gpt2_files = tmp_path / "gpt2-files"
    gpt2_files.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2 / name, gpt2_files / name)
    outputs = []
    for tokenizer in (GPT2, gpt2_files):
        out = tmp_path / tokenizer.name / "train"
        succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(tokenizer), output=out))
        outputs.append(pair_bytes(out))
    assert outputs[0] == outputs[1]


def test_globs_lists_and_compressed_inputs_give_the_same_dataset(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    inputs = tmp_path / "in"
    inputs.mkdir()
    lines = OWT.read_bytes().splitlines(keepends=True)
    (inputs / "a.jsonl").write_bytes(b"".join(lines[:400]))
    with gzip.open(inputs / "b.jsonl.gz", "wb") as handle:
        handle.write(b"".join(lines[400:700]))
    (inputs / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines[700:])))

    whole = tmp_path / "whole" / "train"
    succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), output=whole))
    by_glob = tmp_path / "glob" / "train"
    succeeded(preprocess("--input", str(inputs / "*.jsonl*"), "--tokenizer", str(GPT2), "--chunk-mb", "1", output=by_glob))
    by_list = tmp_path / "list" / "train"
    succeeded(preprocess("--input", f"{inputs}/a.jsonl:{inputs}/b.jsonl.gz", "--input", str(inputs / "c.jsonl.zst"),
                  "--tokenizer", str(GPT2), output=by_list))
    assert pair_bytes(by_glob) == pair_bytes(whole) == pair_bytes(by_list)


def _plan(tmp_path: Path, corpus: Path, chunk_bytes: int, *, name: str = "train") -> pre.Plan:
    return pre.prepare([str(corpus)], base=REPO_ROOT, tokenizer=str(GPT2), output=tmp_path / name,
                       chunk_bytes=chunk_bytes)


def test_chunks_cut_at_line_ends_and_ranks_get_similar_bytes(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(OWT.read_bytes() * 3)
    small = tmp_path / "small.jsonl"
    small.write_bytes(b"".join(OWT.read_bytes().splitlines(keepends=True)[:30]))
    plan = pre.prepare([str(big), str(small)], base=REPO_ROOT, tokenizer=str(GPT2), output=tmp_path / "out",
                       chunk_bytes=1 << 20)
    data = big.read_bytes()
    for chunk in plan.chunks:
        if chunk.path == big:
            assert chunk.start == 0 or data[chunk.start - 1 : chunk.start] == b"\n"
            assert data[chunk.end - 1 : chunk.end] == b"\n"
    assert sum(c.size for c in plan.chunks) == big.stat().st_size + small.stat().st_size
    # One file far larger than the other still spreads evenly over 3 ranks.
    loads = [sum(c.size for c in plan.assignment(rank, 3)) for rank in range(3)]
    assert sorted(c.index for r in range(3) for c in plan.assignment(r, 3)) == list(range(len(plan.chunks)))
    assert max(loads) - min(loads) <= (1 << 20) + 64 * 1024


def test_a_rerun_redoes_only_missing_chunks_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = tmp_path / "straight" / "train"
    succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--chunk-mb", "1", output=straight))

    out = tmp_path / "resumed" / "train"
    plan = pre.prepare([str(OWT)], base=REPO_ROOT, tokenizer=str(GPT2), output=out, chunk_bytes=1 << 20)
    # An interrupted run: rank 0 of 2 finished its chunks; a half-written chunk lies beside them.
    pre.work(plan, rank=0, ranks=2, workers=1)
    done = sorted(c.index for c in plan.chunks if plan.is_done(c))
    assert 0 < len(done) < len(plan.chunks)
    missing = next(c for c in plan.chunks if not plan.is_done(c))
    stray = indexed.bin_path(plan.chunk_prefix(missing)).with_name(f".chunk-{missing.index:06d}.bin.tmp-999")
    stray.write_bytes(b"half")
    # A machine that went down before its page cache reached the disk: marker there, data short.
    # (Chunk 0 is already in the merged file, its .bin gone; the others wait for rank 1's.)
    assert pre.copied_path(plan.chunk_prefix(plan.chunks[0])).exists()
    assert not indexed.bin_path(plan.chunk_prefix(plan.chunks[0])).exists()
    crashed = next(plan.chunks[i] for i in done if indexed.bin_path(plan.chunk_prefix(plan.chunks[i])).exists())
    data = indexed.bin_path(plan.chunk_prefix(crashed))
    data.write_bytes(data.read_bytes()[:-4096])
    assert not plan.is_done(crashed)

    result = succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--chunk-mb", "1", output=out))
    assert f"resuming: {len(done) - 1} of {len(plan.chunks)} chunk(s) done" in result.stdout
    assert pair_bytes(out) == pair_bytes(straight)
    assert not pre.parts_dir(out).exists()


def test_chunks_copied_into_a_lost_merged_file_are_made_again(tmp_path: Path) -> None:
    straight = tmp_path / "straight" / "train"
    succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--chunk-mb", "1", output=straight))
    out = tmp_path / "lost" / "train"
    plan = pre.prepare([str(OWT)], base=REPO_ROOT, tokenizer=str(GPT2), output=out, chunk_bytes=1 << 20)
    pre.work(plan, workers=1)  # every chunk done and copied; no merge yet
    assert all(pre.copied_path(plan.chunk_prefix(c)).exists() for c in plan.chunks)
    (plan.parts_dir / pre.MERGED_NAME).unlink()

    result = succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--chunk-mb", "1", output=out))
    assert "resuming" not in result.stdout  # every chunk made again
    assert pair_bytes(out) == pair_bytes(straight)


def test_a_killed_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    corpus, straight = corpus_and_reference(tmp_path)

    out = tmp_path / "killed" / "train"
    plan = pre.prepare([str(corpus)], base=REPO_ROOT, tokenizer=str(GPT2), output=out, chunk_bytes=1 << 20)
    job = subprocess.Popen(
        [sys.executable, "-m", "titanenv.data", "run", str(plan.parts_dir), "--workers", "1"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not any(plan.is_done(c) for c in plan.chunks) and time.monotonic() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done_before = [c.index for c in plan.chunks if plan.is_done(c)]
    assert 0 < len(done_before) < len(plan.chunks), "the run must be killed part way through"
    assert not indexed.bin_path(out).exists()

    result = succeeded(preprocess_mib_chunks(corpus, out))
    # The killed step's lock names a process that is gone: taken over, saying so.
    assert f"note: took over the lock of {out} from host {socket.gethostname()} pid {job.pid} (since " in result.stdout
    assert f"process {job.pid} no longer exists" in result.stdout
    assert f"resuming: {len(done_before)} of {len(plan.chunks)}" in result.stdout
    assert pair_bytes(out) == pair_bytes(straight)


def test_existing_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "train"
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=out))
    before = pair_bytes(out)
    refused = preprocess("--input", str(OWT), "--tokenizer", str(GPT2), output=out)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: {out}.bin exists; pass --overwrite to replace it (the old one stays until the new one is complete)"
    )
    assert pair_bytes(out) == before
    succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--overwrite", output=out))
    assert pair_bytes(out) != before


def test_a_changed_input_does_not_mix_with_old_parts(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(OWT.read_bytes())
    out = tmp_path / "train"
    plan = pre.prepare([str(corpus)], base=REPO_ROOT, tokenizer=str(GPT2), output=out, chunk_bytes=1 << 20)
    pre.work(plan, rank=0, ranks=2, workers=1)
    corpus.write_bytes(WIKI.read_bytes())
    refused = preprocess("--input", str(corpus), "--tokenizer", str(GPT2), output=out)
    assert refused.returncode == 1
    assert "holds an unfinished run with other inputs or settings; pass --overwrite" in refused.stderr
    succeeded(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--overwrite", output=out))
    reference = tmp_path / "ref"
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=reference))
    assert pair_bytes(out) == pair_bytes(reference)


BAD_LINES = [
    (b'{"text": "first good document"}', None),
    (b"{not json", "malformed JSON"),
    (b'{"body": "no text key"}', "no text key"),
    (b'{"text": 42}', "text is not a string"),
    (b'{"text": ""}', "empty text"),
    (b'{"text": "bad \xff byte"}', "invalid UTF-8"),
    (b'["a", "list"]', "not a JSON object"),
    (b"", "blank line"),
    (b'{"text": "last good document"}', None),
]


def _bad_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    return path


@pytest.mark.parametrize("backend", ["gigatoken", "hf"])
def test_bad_lines_are_skipped_and_counted_with_file_and_line(tmp_path: Path, backend: str) -> None:
    corpus = _bad_corpus(tmp_path)
    out = tmp_path / "train"
    result = succeeded(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--backend", backend,
                           "--max-skipped-fraction", "1", output=out))
    assert "skipped 7 line(s): 1 blank line, 1 empty text, 1 invalid UTF-8, 1 malformed JSON, " \
           "1 no text key, 1 not a JSON object, 1 text is not a string" in result.stdout
    for number, (_, reason) in enumerate(BAD_LINES, start=1):
        if reason:
            assert f"{corpus}:{number}: {reason}" in result.stdout
    dataset = indexed.IndexedDataset(out)
    assert dataset.document_count == 2
    from titanenv.data.tokenizer import load_tokenizer

    tok = load_tokenizer(GPT2)
    assert tok.decode(dataset[1]) == "last good document<|endoftext|>"


def test_strict_stops_at_the_first_bad_line_and_leaves_no_output(tmp_path: Path) -> None:
    corpus = _bad_corpus(tmp_path)
    out = tmp_path / "train"
    result = preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--strict", output=out)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {corpus}:2: malformed JSON (--strict)"
    assert not indexed.bin_path(out).exists() and not indexed.idx_path(out).exists()


def nothing_at(out: Path) -> bool:
    """No output pair, and no parts either."""
    return not any(p.exists() for p in (indexed.bin_path(out), indexed.idx_path(out), pre.parts_dir(out)))


def test_a_missing_text_key_fails_naming_the_keys_and_a_fixed_rerun_starts_afresh(tmp_path: Path) -> None:
    out = tmp_path / "train"
    result = preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), "--text-key", "content", output=out)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {WIKI}: no line has key 'content'; lines have: text (--text-key, data.text_key)"]
    assert nothing_at(out)
    # The fixed option: no --overwrite needed, nothing of the wrongly keyed run reused.
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), "--text-key", "text", output=out))
    reference = tmp_path / "ref"
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=reference))
    assert pair_bytes(out) == pair_bytes(reference)


def test_a_binary_input_fails_in_one_line(tmp_path: Path) -> None:
    binary = Path(sys.executable).resolve()
    out = tmp_path / "train"
    result = preprocess("--input", str(binary), "--tokenizer", str(GPT2), output=out)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {binary}: no document in ") and f"invalid UTF-8 (first: {binary}:1)" in line
    assert nothing_at(out)


def test_an_empty_input_fails_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    out = tmp_path / "train"
    result = preprocess("--input", str(empty), "--tokenizer", str(GPT2), output=out)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: no document: the input is empty ({empty})"]
    assert nothing_at(out)


def test_too_many_skipped_lines_fail_and_a_larger_fraction_accepts_the_chunks(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(WIKI.read_bytes() + b'{"content": "elsewhere", "id": 1}\n' * 5)
    out = tmp_path / "train"
    result = preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--chunk-mb", "1", output=out)
    assert result.returncode == 1
    parts = pre.parts_dir(out)
    assert result.stderr.splitlines() == [
        "error: skipped 5 of 127 lines (3.9%), more than data.max_skipped_fraction 0.01 (--max-skipped-fraction): "
        f"5 no text key (first: {corpus}:123); lines without key 'text' have: content, id; {parts} keeps the "
        "chunks: rerun with a larger --max-skipped-fraction to accept them, or with other options to start over"]
    assert not indexed.bin_path(out).exists() and not indexed.idx_path(out).exists()
    chunks = len(pre.Plan.read(parts / pre.PLAN_NAME).chunks)

    accepted = succeeded(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--chunk-mb", "1",
                             "--max-skipped-fraction", "0.05", output=out))
    assert f"resuming: {chunks} of {chunks} chunk(s) done" in accepted.stdout
    assert "skipped 5 line(s): 5 no text key" in accepted.stdout
    reference = tmp_path / "ref"
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=reference))
    assert pair_bytes(out) == pair_bytes(reference)


def test_a_rejected_run_is_replaced_by_one_with_other_options(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(WIKI.read_bytes() + b'{"content": "elsewhere"}\n' * 5)
    out = tmp_path / "train"
    assert preprocess("--input", str(corpus), "--tokenizer", str(GPT2), output=out).returncode == 1
    assert pre.parts_dir(out).exists()
    succeeded(preprocess("--input", str(corpus), "--tokenizer", str(NEOX), "--max-skipped-fraction", "0.1", output=out))
    reference = tmp_path / "ref"
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(NEOX), output=reference))
    assert pair_bytes(out) == pair_bytes(reference)


def test_blank_lines_do_not_count_as_skipped_documents(tmp_path: Path) -> None:
    corpus = tmp_path / "spaced.jsonl"
    corpus.write_bytes(WIKI.read_bytes().replace(b"\n", b"\n\n"))
    out = tmp_path / "train"
    result = succeeded(preprocess("--input", str(corpus), "--tokenizer", str(GPT2), output=out))
    assert "skipped 122 line(s): 122 blank line" in result.stdout
    assert indexed.IndexedDataset(out).document_count == 122


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--input", "/nonexistent/x.jsonl"], "error: input /nonexistent/x.jsonl: no such file"),
        (["--input", "/nonexistent/*.jsonl"], "error: input /nonexistent/*.jsonl: the pattern matches no file"),
        (["--tokenizer", "/nonexistent/tok"], "error: tokenizer /nonexistent/tok: no such file or directory"),
        (["--backend", "fast"], "data.backend"),
        (["--eod-token", "<nope>"], "end-of-document token '<nope>' is not in its vocabulary"),
        (["--max-skipped-fraction", "2"], "data.max_skipped_fraction: expected less than or equal to 1"),
    ],
)
def test_bad_options_fail_before_any_work_in_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    out = tmp_path / "out" / "train"
    options = {"--input": str(WIKI), "--tokenizer": str(GPT2), **dict(zip(args[::2], args[1::2]))}
    result = preprocess(*[word for pair in options.items() for word in pair], output=out)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_unreadable_tokenizer_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{ this is not json")
    result = preprocess("--input", str(WIKI), "--tokenizer", str(broken), output=tmp_path / "train")
    assert result.returncode == 1 and result.stderr.startswith(f"error: tokenizer {broken}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out" / "train"
    result = succeeded(preprocess("--input", str(OWT), "--tokenizer", str(GPT2), "--dry", output=out))
    assert "chunks: " in result.stdout and "dry run" in result.stdout
    assert not (tmp_path / "out").exists()


def test_inspect_decodes_and_verify_finds_corruption(tmp_path: Path) -> None:
    out = tmp_path / "train"
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(NEOX), output=out))
    inspected = succeeded(run_invoke("data.inspect", "--prefix", str(out), "--document", "-1", "--chars", "80"))
    assert "documents: 122" in inspected.stdout and "dtype: uint16" in inspected.stdout
    last_text = json.loads(WIKI.read_text(encoding="utf-8").splitlines()[-1])["text"]
    assert last_text[:80] in inspected.stdout
    assert succeeded(run_invoke("data.verify", "--prefix", str(out))).stdout.startswith(f"ok {out}: 122 documents")

    data = indexed.bin_path(out)
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size - 2)
    broken = run_invoke("data.verify", "--prefix", str(out))
    assert broken.returncode == 1 and "index promises" in broken.stderr
    idx = indexed.idx_path(out)
    raw = bytearray(idx.read_bytes())
    raw[:9] = b"NOTMMIDX\x00"
    idx.write_bytes(bytes(raw))
    broken = run_invoke("data.verify", "--prefix", str(out))
    assert broken.returncode == 1 and "not an MMIDIDX index" in broken.stderr


def test_progress_lines_without_a_terminal(tmp_path: Path) -> None:
    lines: list[str] = []
    plan = _plan(tmp_path, OWT, 1 << 20)
    progress = pre.Progress(interval=0.01, echo=lines.append, bar=False)
    pre.run(plan, workers=1, progress=progress)
    assert lines and all(line.startswith("preprocess: ") and "M tokens/s" in line for line in lines)
