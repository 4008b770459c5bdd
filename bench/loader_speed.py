"""The pretokenized loader against TorchTitan's HuggingFace loader, and its share of a CPU training step.

1. Tokens per second delivered to the training loop, same corpus (the shared
   OpenWebText sample), tokenizer (GPT-2), seq_len and batch size, both in
   this process with TorchTitan's default of no loader workers:
   - TorchTitan 0.3.0's ``HuggingFaceTextDataLoader`` reading the JSONL with
     ``datasets`` (local files, offline) and tokenizing on the fly, what the
     original environment trained from;
   - ours (``PretokenizedDataLoader``) over the ``.bin/.idx`` that
     data.preprocess made of the same file.
   Both deliver ``--batches`` batches, after one warm-up batch; construction
   (``load_dataset``'s Arrow cache, the memory map) is timed apart.
2. Loader overhead in real training: ``invoke train.run`` of the tiny CPU
   model, with TorchTitan's own metric ``time_metrics/data_loading(%)``
   (time in ``next(data_iterator)`` over the time between log steps) read
   from its TensorBoard events, after the first logging window (warm-up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from benchlib import ROOT, invoke

from titanenv.sample_data import materialize

# The repository's sample corpus and tokenizer as plain files (sample_data/README.md).
SHARED = materialize(ROOT / "bench" / "out" / "sample-data")
CORPUS = SHARED / "corpus" / "openwebtext_1000.jsonl"
TOKENIZER = SHARED / "tokenizers" / "gpt2"
WORK = ROOT / ".work" / "bench-loader"


def drain(loader, batches: int) -> tuple[float, int]:
    """Seconds and tokens for ``batches`` batches, after one warm-up batch."""
    iterator = iter(loader)
    next(iterator)
    tokens = 0
    started = time.perf_counter()
    for _ in range(batches):
        _, labels = next(iterator)
        tokens += labels.numel()
    return time.perf_counter() - started, tokens


def hf_loader(seq_len: int, batch_size: int):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader

    corpus_dir = WORK / "jsonl"  # load_dataset(dir) reads the JSON files in it
    corpus_dir.mkdir(exist_ok=True)
    if not (corpus_dir / CORPUS.name).exists():
        shutil.copy2(CORPUS, corpus_dir / CORPUS.name)
    config = HuggingFaceTextDataLoader.Config(dataset="c4_test", dataset_path=str(corpus_dir), infinite=True)
    return HuggingFaceTextDataLoader(config, dp_world_size=1, dp_rank=0,
                                     tokenizer=HuggingFaceTokenizer(tokenizer_path=str(TOKENIZER)),
                                     seq_len=seq_len, local_batch_size=batch_size)


def our_loader(prefix: Path, seq_len: int, batch_size: int):
    from titanenv.train.loader import PretokenizedDataLoader

    config = PretokenizedDataLoader.Config(paths=[str(prefix)])
    return PretokenizedDataLoader(config, dp_world_size=1, dp_rank=0, seq_len=seq_len, local_batch_size=batch_size)


def loader_throughput(prefix: Path, seq_len: int, batch_size: int, batches: int, repeat: int) -> tuple[float, float]:
    rates: dict[str, list[float]] = {"hf": [], "ours": []}
    for _ in range(repeat):
        for name, make in (("hf", lambda: hf_loader(seq_len, batch_size)),
                           ("ours", lambda: our_loader(prefix, seq_len, batch_size))):
            started = time.perf_counter()
            loader = make()
            built = time.perf_counter() - started
            seconds, tokens = drain(loader, batches)
            rates[name].append(tokens / seconds)
            print(f"  {name:5} built in {built:6.3f} s, {batches} batches of {batch_size}x{seq_len}: "
                  f"{seconds:7.3f} s, {tokens / seconds / 1e6:9.2f} M tok/s", flush=True)
    return statistics.median(rates["hf"]), statistics.median(rates["ours"])


def loader_share_of_step(prefix: Path, env: dict[str, str], steps: int, log_freq: int) -> list[float]:
    """TorchTitan's data_loading(%) per logging window after the first, from a real train.run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    name = "bench-loader"
    invoke("train.run", "--name", name, "--dataset", str(prefix), "--steps", str(steps), "--",
           "--metrics.enable_tensorboard", "--metrics.log_freq", str(log_freq), "--checkpoint.no-enable", env=env)
    (events,) = {p.parent for p in Path(env["HOME"]).rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    share = accumulator.Scalars("time_metrics/data_loading(%)")
    return [point.value for point in share if point.step > log_freq]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40, help="Batches timed per loader (40 x 8 x 2048: 0.66 M tokens).")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="Training steps of the overhead run.")
    args = parser.parse_args()

    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    home = WORK / "home"
    home.mkdir()
    # Everything under WORK: scratch, HF caches; no hub.
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(WORK / "hf"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")})
    prefix = WORK / "owt_gpt2"
    invoke("data.preprocess", "--input", str(CORPUS), "--tokenizer", str(TOKENIZER), "--output", str(prefix), env=env)
    # The CPU recipe validates on data.valid_output: here the same dataset (this measures the loader, not the model).
    env["INVOKE_DATA_VALID_OUTPUT"] = str(prefix)

    print(f"1. tokens/s delivered (seq_len {args.seq_len}, batch {args.batch_size}, no workers; medians of {args.repeat})")
    hf, ours = loader_throughput(prefix, args.seq_len, args.batch_size, args.batches, args.repeat)
    print(f"   TorchTitan HuggingFaceTextDataLoader {hf / 1e6:10.2f} M tok/s")
    print(f"   PretokenizedDataLoader               {ours / 1e6:10.2f} M tok/s")
    print(f"   ratio ours / HF loader: {ours / hf:.0f}x (target >= 50x)")

    log_freq = 10
    shares = loader_share_of_step(prefix, env, args.steps, log_freq)
    print(f"2. train.run, tiny CPU model ({args.steps} steps, TorchTitan's data_loading(%) per {log_freq}-step window "
          f"after the first): {', '.join(f'{s:.3f}%' for s in shares)}")
    print(f"   loader time / step time: {max(shares) / 100:.4f} at most (target <= 0.02)")


if __name__ == "__main__":
    main()
