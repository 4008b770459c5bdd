"""data.preprocess against bare gigatoken and bare HF tokenizers, and its memory, in one run.

Makes 5x and 20x repeated copies of the shared OpenWebText sample under
.work/bench, then, each command in a fresh process, medians of --repeat:

1. Throughput on the 20x input (21 M GPT-2 tokens), steady state:
   - bare gigatoken: ``encode_files(JsonlFileSource, parallel=True)`` (JSON
     parsed in Rust, nothing written), timed around that call after one
     warm-up encode has set gigatoken up;
   - data.preprocess (gigatoken): its ``tokenize_seconds`` from the run's
     ``PREFIX.summary.json``: from a set-up tokenizer to the last chunk
     written (JSON parsing, tokenizing, writing the chunk .bin/.idx);
   - bare HF ``json.loads`` + ``encode_batch`` timed after loading the
     tokenizer, against data.preprocess ``--backend hf`` measured the same way.
2. Fixed costs, printed apart: each process's wall time minus the timed part
   (interpreter, imports, tokenizer load and set-up, plan), data.preprocess's
   merge, and the whole command on a one-line input against
   ``python -c "import gigatoken"``.
3. Peak RSS of the largest process of data.preprocess (parent or worker; from
   wait4) on the 20x input against the 5x input (target <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from titanenv.sample_data import materialize

ROOT = Path(__file__).resolve().parent.parent
# The repository's sample corpus and tokenizer as plain files (sample_data/README.md).
SHARED = materialize(ROOT / "bench" / "out" / "sample-data")
CORPUS = SHARED / "corpus" / "openwebtext_1000.jsonl"
TOKENIZER = SHARED / "tokenizers" / "gpt2"
WORK = ROOT / ".work" / "bench"

BARE_GIGA = """
import json, sys, time, gigatoken as g
tok = g.Tokenizer(sys.argv[2] + "/tokenizer.json")
tok.encode_batch(["warm up"], parallel=False)
started = time.perf_counter()
tok.encode_files(g.JsonlFileSource([sys.argv[1]], field="text"), parallel=True)
print(json.dumps({"timed": time.perf_counter() - started}))
"""
BARE_HF = """
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2] + "/tokenizer.json")
started = time.perf_counter()
texts = [json.loads(line)["text"] for line in open(sys.argv[1], encoding="utf-8")]
tok.encode_batch(texts, add_special_tokens=False)
print(json.dumps({"timed": time.perf_counter() - started}))
"""


def launch(argv: list[str]) -> dict:
    """Run ``argv``; wall seconds, peak RSS (KiB) of its largest process, and what it printed as JSON."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{argv[:4]}... failed with {process.returncode}")
    lines = out.decode().strip().splitlines()
    printed = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return {"wall": wall, "rss_kib": usage.ru_maxrss, **printed}


def ours(corpus: Path, backend: str) -> dict:
    out = WORK / f"out-{backend}" / "train"
    result = launch([sys.executable, "-m", "invoke", "data.preprocess", "--input", str(corpus),
                     "--tokenizer", str(TOKENIZER), "--output", str(out), "--backend", backend, "--overwrite"])
    summary = json.loads(out.with_name("train.summary.json").read_text())
    return {**result, "timed": summary["tokenize_seconds"], "merge": summary["merge_seconds"],
            "tokens": summary["tokens"] - summary["documents"]}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for times in (5, 20):
        inputs[times] = WORK / f"owt_{times}x.jsonl"
        if not inputs[times].exists():
            inputs[times].write_bytes(CORPUS.read_bytes() * times)
    tiny = WORK / "one.jsonl"
    tiny.write_bytes(CORPUS.read_bytes().split(b"\n", 1)[0] + b"\n")
    big = inputs[20]

    giga, mine, hf, mine_hf, small, one = [], [], [], [], [], []
    for _ in range(args.repeat):  # interleaved, so drifts in machine load hit every command alike
        giga.append(launch([sys.executable, "-c", BARE_GIGA, str(big), str(TOKENIZER)]))
        mine.append(ours(big, "gigatoken"))
        small.append(ours(inputs[5], "gigatoken"))
        one.append(ours(tiny, "gigatoken"))
    for _ in range(max(1, args.repeat // 3)):  # HF is 50x slower
        hf.append(launch([sys.executable, "-c", BARE_HF, str(big), str(TOKENIZER)]))
        mine_hf.append(ours(big, "hf"))
    import_only = statistics.median(launch([sys.executable, "-c", "import gigatoken"])["wall"]
                                    for _ in range(args.repeat))
    tokens = mine[0]["tokens"]  # end-of-document tokens left out: the bare runs add none

    print(f"20x input: {tokens:,} tokens; medians of {args.repeat} runs (HF: {len(hf)})")
    print(f"{'command':32} {'timed s':>8} {'M tok/s':>8} {'rest of process s':>18} {'merge s':>8}")
    rows = [("gigatoken encode_files", giga), ("data.preprocess (gigatoken)", mine),
            ("HF json.loads + encode_batch", hf), ("data.preprocess --backend hf", mine_hf)]
    rate = {}
    for name, runs in rows:
        timed = median(runs, "timed")
        rate[name] = tokens / timed
        merge = f"{median(runs, 'merge'):8.2f}" if "merge" in runs[0] else f"{'-':>8}"
        print(f"{name:32} {timed:8.3f} {rate[name] / 1e6:8.2f} {median(runs, 'wall') - timed:18.2f} {merge}")
    giga_ratio = rate["data.preprocess (gigatoken)"] / rate["gigatoken encode_files"]
    hf_ratio = rate["data.preprocess --backend hf"] / rate["HF json.loads + encode_batch"]
    print(f"ratio data.preprocess / gigatoken encode_files: {giga_ratio:.2f} (target >= 0.8)")
    print(f"ratio data.preprocess --backend hf / HF encode_batch: {hf_ratio:.2f} (target >= 0.9)")
    print(f"whole command on the 20x input: data.preprocess {median(mine, 'wall'):.2f} s, "
          f"bare gigatoken {median(giga, 'wall'):.2f} s")
    extra = median(one, "wall") - import_only
    print(f"one-line input: {extra:.2f} s more than python -c 'import gigatoken' (target <= 1.5)")
    rss5, rss20 = median(small, "rss_kib"), median(mine, "rss_kib")
    print(f"peak RSS of the largest process: 5x {rss5 / 1024:.0f} MiB, 20x {rss20 / 1024:.0f} MiB, "
          f"ratio {rss20 / rss5:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
