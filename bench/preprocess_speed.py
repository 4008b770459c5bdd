"""data.preprocess throughput against bare gigatoken and bare HF tokenizers, in one run.

Makes a 20x repeated copy of the shared OpenWebText sample under .work/bench,
then times, each in a fresh process (medians of --repeat runs):

- bare gigatoken encode_files (JSONL parsed in Rust) vs our preprocess (gigatoken);
- bare HF tokenizers encode_batch vs our preprocess with --backend hf;
- fixed cost: the same commands on a one-line input.

Throughput excludes each command's fixed cost: tokens / (time on the big
input - time on the one-line input). Prints a table with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
CORPUS = SHARED / "corpus" / "openwebtext_1000.jsonl"
TOKENIZER = SHARED / "tokenizers" / "gpt2"
WORK = ROOT / ".work" / "bench"

BARE_GIGA = """
import sys, gigatoken as g
tok = g.Tokenizer(sys.argv[2] + "/tokenizer.json")
a = tok.encode_files(g.JsonlFileSource([sys.argv[1]], field="text"), parallel=True)
"""
BARE_HF = """
import sys, json
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2] + "/tokenizer.json")
texts = [json.loads(line)["text"] for line in open(sys.argv[1], encoding="utf-8")]
tok.encode_batch(texts, add_special_tokens=False)
"""


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def ours(corpus: Path, backend: str) -> list[str]:
    out = WORK / f"out-{backend}" / "train"
    return [sys.executable, "-m", "invoke", "data.preprocess", "--input", str(corpus), "--tokenizer", str(TOKENIZER),
            "--output", str(out), "--backend", backend, "--overwrite"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    big = WORK / "owt_20x.jsonl"
    if not big.exists():
        big.write_bytes(CORPUS.read_bytes() * 20)
    tiny = WORK / "one.jsonl"
    tiny.write_bytes(CORPUS.read_bytes().split(b"\n", 1)[0] + b"\n")
    tokens = 21_099_980 - 20_000  # GPT-2 ids of the 20x corpus, without end-of-document tokens

    commands = {
        "gigatoken encode_files": lambda path: [sys.executable, "-c", BARE_GIGA, str(path), str(TOKENIZER)],
        "data.preprocess (gigatoken)": lambda path: ours(path, "gigatoken"),
        "HF encode_batch": lambda path: [sys.executable, "-c", BARE_HF, str(path), str(TOKENIZER)],
        "data.preprocess --backend hf": lambda path: ours(path, "hf"),
    }
    import_only = statistics.median(timed([sys.executable, "-c", "import gigatoken"]) for _ in range(args.repeat))
    results = {}
    for name, make in commands.items():
        repeat = args.repeat if "HF" not in name and "hf" not in name else 1
        fixed = statistics.median(timed(make(tiny)) for _ in range(repeat))
        whole = statistics.median(timed(make(big)) for _ in range(repeat))
        results[name] = (fixed, whole, tokens / max(whole - fixed, 1e-9))
    print(f"{'command':32} {'fixed s':>8} {'20x s':>8} {'M tok/s':>8}")
    for name, (fixed, whole, rate) in results.items():
        print(f"{name:32} {fixed:8.2f} {whole:8.2f} {rate / 1e6:8.2f}")
    giga = results["data.preprocess (gigatoken)"][2] / results["gigatoken encode_files"][2]
    hf = results["data.preprocess --backend hf"][2] / results["HF encode_batch"][2]
    extra = results["data.preprocess (gigatoken)"][0] - import_only
    print(f"ratio data.preprocess / gigatoken encode_files: {giga:.2f} (target >= 0.8)")
    print(f"ratio data.preprocess --backend hf / HF encode_batch: {hf:.2f} (target >= 0.9)")
    print(f"one-line input: {extra:.2f} s more than python -c 'import gigatoken' (target <= 1.5)")


if __name__ == "__main__":
    main()
