"""data.preprocess on Parquet and Arrow against bare gigatoken over the same texts, in one run.

Writes the shared OpenWebText sample repeated 5x and 20x as Parquet (row
groups of 1,000 rows, pyarrow's default Snappy), the 20x texts as JSONL and,
where ``datasets`` is installed, as a dataset saved by ``save_to_disk``, all
under .work/bench. Then, each command in a fresh process, interleaved so
drifts in machine load hit every command alike, medians of --repeat:

1. Bare gigatoken, timed around the call after one warm-up encode:
   - ``encode_files(ParquetFileSource)``: its own Parquet reader, threads;
   - ``encode_files(JsonlFileSource)`` on the same texts as JSONL;
   - pyarrow ``iter_batches`` of the text column (2,000 rows a batch), each
     batch handed to ``encode_batch`` as an awkward view of its Arrow buffers
     (what data.preprocess does), on one thread as in each of its workers;
   - the same with ``to_pylist()`` (a Python string per document): which
     way of feeding gigatoken costs less per core.
2. data.preprocess (gigatoken) on the Parquet, the saved dataset and the
   JSONL: its ``tokenize_seconds`` from ``PREFIX.summary.json`` (from a set-up
   tokenizer to the last chunk written: reading, tokenizing, writing).
3. Peak RSS of the largest process of data.preprocess on the 20x Parquet
   against the 5x one (from wait4).

Ratios are of tokens per second against the bare commands of the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_speed import CORPUS, TOKENIZER, WORK, launch, median  # noqa: E402

BARE = """
import json, sys, time
import gigatoken as g
tok = g.Tokenizer(sys.argv[3] + "/tokenizer.json")
tok.encode_batch(["warm up"], parallel=False)
mode, path = sys.argv[1], sys.argv[2]
if mode in ("batches", "pylist"):
    import awkward as ak, numpy as np, pyarrow.parquet as pq
started = time.perf_counter()
if mode == "parquet":
    tok.encode_files(g.ParquetFileSource([path], column="text"), parallel=True)
elif mode == "jsonl":
    tok.encode_files(g.JsonlFileSource([path], field="text"), parallel=True)
else:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2000, columns=["text"], use_threads=False):
        texts = batch.column(0)
        if mode == "pylist":
            tok.encode_batch(texts.to_pylist(), parallel=False)
            continue
        _, offsets, data = texts.buffers()
        offsets = np.frombuffer(offsets, np.int32, len(texts) + 1, texts.offset * 4).astype(np.int64)
        layout = ak.contents.ListOffsetArray(
            ak.index.Index64(offsets - offsets[0]),
            ak.contents.NumpyArray(np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]],
                                   parameters={"__array__": "char"}),
            parameters={"__array__": "string"})
        tok.encode_batch(ak.Array(layout), parallel=False)
print(json.dumps({"timed": time.perf_counter() - started}))
"""


def bare(mode: str, path: Path) -> dict:
    return launch([sys.executable, "-c", BARE, mode, str(path), str(TOKENIZER)])


def ours(source: Path, name: str) -> dict:
    out = WORK / f"out-{name}" / "train"
    result = launch([sys.executable, "-m", "invoke", "data.preprocess", "--input", str(source),
                     "--tokenizer", str(TOKENIZER), "--output", str(out), "--overwrite"])
    summary = json.loads(out.with_name("train.summary.json").read_text())
    digest = hashlib.sha256(out.with_suffix(".bin").read_bytes() + out.with_suffix(".idx").read_bytes())
    return {**result, "timed": summary["tokenize_seconds"], "tokens": summary["tokens"] - summary["documents"],
            "sha256": digest.hexdigest()}


INPUTS = {"parquet5": WORK / "owt_5x.parquet", "parquet20": WORK / "owt_20x.parquet",
          "jsonl": WORK / "owt_20x.jsonl", "arrow": WORK / "owt_20x_saved"}


def make_inputs() -> None:
    """Write the inputs that are missing (run in a process of its own: see main)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    WORK.mkdir(parents=True, exist_ok=True)
    texts = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    for times in (5, 20):
        if not INPUTS[f"parquet{times}"].exists():
            pq.write_table(pa.table({"text": texts * times}), INPUTS[f"parquet{times}"], row_group_size=1000)
    if not INPUTS["jsonl"].exists():
        INPUTS["jsonl"].write_bytes(CORPUS.read_bytes() * 20)
    try:
        import datasets
    except ImportError:
        return
    if not INPUTS["arrow"].exists():
        datasets.disable_progress_bars()
        datasets.Dataset.from_dict({"text": texts * 20}).save_to_disk(str(INPUTS["arrow"]), max_shard_size="16MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--make-inputs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_inputs:
        make_inputs()
        return
    # In a process of its own: the peak RSS wait4 reports for a command counts this
    # process's own peak too (the memory it had when it started the command).
    subprocess.run([sys.executable, __file__, "--make-inputs"], check=True)
    inputs = {name: path for name, path in INPUTS.items() if path.exists()}
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):  # interleaved: drifts in machine load hit every command alike
        for mode in ("parquet", "jsonl", "batches", "pylist"):
            runs.setdefault(f"bare {mode}", []).append(bare(mode, inputs["parquet20" if mode != "jsonl" else "jsonl"]))
        for name in ("parquet20", "arrow", "jsonl", "parquet5"):
            if name in inputs:
                runs.setdefault(name, []).append(ours(inputs[name], name))
    tokens = runs["parquet20"][0]["tokens"]  # end-of-document tokens left out: the bare runs add none
    outputs = {run["sha256"] for name in ("parquet20", "arrow", "jsonl") for run in runs.get(name, [])}
    assert len(outputs) == 1, "the Parquet, Arrow and JSONL outputs differ"

    print(f"20x input: {tokens:,} tokens, Parquet {inputs['parquet20'].stat().st_size / 2**20:.0f} MiB; "
          f"medians of {args.repeat} runs; outputs of Parquet, Arrow and JSONL byte-identical")
    print(f"{'command':58} {'timed s':>8} {'M tok/s':>8}")
    rows = [
        ("bare gigatoken encode_files(ParquetFileSource)", "bare parquet"),
        ("bare gigatoken encode_files(JsonlFileSource), same texts", "bare jsonl"),
        ("one thread: iter_batches + encode_batch(awkward view)", "bare batches"),
        ("one thread: iter_batches + encode_batch(to_pylist)", "bare pylist"),
        ("data.preprocess on the Parquet", "parquet20"),
        ("data.preprocess on the saved dataset (Arrow)", "arrow"),
        ("data.preprocess on the JSONL", "jsonl"),
    ]
    rate = {}
    for label, key in rows:
        if key not in runs:
            continue
        timed = median(runs[key], "timed")
        rate[key] = tokens / timed
        print(f"{label:58} {timed:8.3f} {rate[key] / 1e6:8.2f}")
    for key, against in (("parquet20", "bare parquet"), ("parquet20", "bare jsonl"), ("arrow", "bare parquet"),
                         ("jsonl", "bare jsonl")):
        if key in rate:
            print(f"ratio {key} / {against}: {rate[key] / rate[against]:.2f} (target >= 0.8)")
    print(f"feeding gigatoken from Arrow batches on one thread: awkward view / to_pylist "
          f"{rate['bare batches'] / rate['bare pylist']:.2f}x")
    rss5, rss20 = median(runs["parquet5"], "rss_kib"), median(runs["parquet20"], "rss_kib")
    print(f"peak RSS of the largest process on Parquet: 5x {rss5 / 1024:.0f} MiB, 20x {rss20 / 1024:.0f} MiB, "
          f"ratio {rss20 / rss5:.2f}")
    print(f"spread of data.preprocess on the Parquet: {min(r['timed'] for r in runs['parquet20']):.3f}.."
          f"{max(r['timed'] for r in runs['parquet20']):.3f} s; load average {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
