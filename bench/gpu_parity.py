"""train.run against bare TorchTitan on one GPU: tokens/s, MFU, their ratio, and the loader's share of a step.

Both sides train the same model on the same batches: the recipe's resolved
TOML (train_configs/gpu_smoke.toml by default; ``--recipe llama3_1b`` for
the ~1B one), the same dataset made here by ``invoke data.preprocess`` from
``--corpus`` with ``--tokenizer``, the same step count and TorchTitan
options, one process each (``--standalone --nproc_per_node=1``):

- **ours**: ``invoke train.run --config RECIPE --procs-per-node 1 -- OPTIONS``,
  i.e. the task process (configuration, data and TorchTitan checks), then
  ``torchrun ... -m titanenv.train RUN/train.toml``, whose wrapper reads
  the TOML and calls ``torchtitan.train.main()``.
- **bare**: ``torchrun --standalone --nproc_per_node=1 -m torchtitan.train
  --module titanenv.train.registry --config from_toml OPTIONS`` with
  ``TITANENV_TRAIN_TOML`` naming the TOML ``train.run --dry`` resolves
  (the same text train.run writes to its run directory): TorchTitan's
  own entry point and trainer with no titanenv process around it. The model
  and the data still come through TorchTitan's extension points from our
  registry (``--module/--config``) and loader (a ``ParallelAwareDataloader``):
  TorchTitan 0.3.0 reads no Megatron ``.bin/.idx`` itself and knows no
  GPT-2-vocabulary model, so this is the only way to give it the same model
  and data. What differs is therefore only what wraps the trainer (the task,
  the ``python -m titanenv.train`` wrapper). Without a GPU (``--device cpu``,
  the default there) the bare side must also apply ``titanenv.train.cpu``
  (TorchTitan alone would pick CUDA): a three-line shim does that, then runs
  ``torchtitan.train`` as ``__main__``.

Figures are TorchTitan's own, read from its TensorBoard events in each
side's dump folder: ``throughput(tps)`` (tokens/s per device), ``mfu(%)`` and
``time_metrics/data_loading(%)`` (time in ``next(data_iterator)`` over the
window's wall time), per logging window after the first two (the first
holds compilation). Each of ``--repeat`` rounds runs both sides, in
alternating order; the medians are printed, with ours / bare (target >= 0.98;
also for each side's fastest window, which other load on a shared machine
slows least) and the loader's share on our side (target <= 1 %). Checkpoints are off on
both sides (``--checkpoint.no-enable``); everything else is the recipe's.

On a GPU machine without this project's dependencies, the script says in one
line what is missing; README.md (Benchmarks) says what to install there.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / ".work" / "bench-gpu-parity"
TAGS = {"tps": "throughput(tps)", "mfu": "mfu(%)", "loading": "time_metrics/data_loading(%)"}
# Top-level modules the two sides import: this project's task layer, its data
# step, TorchTitan and what TorchTitan imports, and the events reader.
NEEDED = ("invoke", "pydantic", "yaml", "jinja2", "numpy", "tokenizers", "torch", "torchtitan", "tyro", "torchdata",
          "torch_checkpointing", "spmd_types", "datasets", "safetensors", "einops", "tensorboard")
# Bare TorchTitan on a machine without GPUs: the same CPU fixes train.run applies.
CPU_SHIM = """import runpy
from titanenv.train import cpu
cpu.apply()
runpy.run_module("torchtitan.train", run_name="__main__", alter_sys=True)
"""


def missing_modules() -> list[str]:
    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except ImportError:
            return True

    missing = [name for name in NEEDED if absent(name)]
    if not missing:
        try:
            import torchtitan.train  # noqa: F401  (what it imports in turn)
        except ModuleNotFoundError as exc:
            missing.append(exc.name or str(exc))
    return missing


def run(argv: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{what} failed (exit status {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout + done.stderr


def invoke(*args: str, env: dict[str, str]) -> str:
    return run([sys.executable, "-m", "invoke", *args], env, "invoke " + " ".join(args[:1]))


def figures(dump_folder: Path, skip_through: int) -> dict[str, list[float]]:
    """TorchTitan's metrics per logging window after step ``skip_through``, from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in dump_folder.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    present = set(accumulator.Tags()["scalars"])
    return {key: [point.value for point in accumulator.Scalars(tag) if point.step > skip_through]
            for key, tag in TAGS.items() if tag in present}


def resolve(recipe: Path, prefix: Path, env: dict[str, str]) -> Path:
    """The TOML train.run resolves for the recipe, as ``train.run --dry`` prints it."""
    out = invoke("train.run", "--dry", "--config", str(recipe), "--dataset", str(prefix), "--procs-per-node", "1",
                 env=env)
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Resolved from "))
    end = next(i for i, line in enumerate(lines) if line.startswith("# would run: "))
    toml = WORK / "train.toml"
    toml.write_text("\n".join(lines[start:end]) + "\n")
    return toml


def ours(recipe: Path, prefix: Path, name: str, options: list[str], env: dict[str, str]) -> Path:
    """invoke train.run; returns its dump folder."""
    out = invoke("train.run", "--config", str(recipe), "--name", name, "--dataset", str(prefix),
                 "--procs-per-node", "1", "--", *options, env=env)
    found = re.search(r"^run \S+; checkpoints in (\S+)/checkpoint$", out, re.MULTILINE)
    if not found:
        sys.exit(f"train.run printed no dump folder:\n{out[-3000:]}")
    return Path(found.group(1))


def bare(toml: Path, dump_folder: Path, options: list[str], env: dict[str, str], cpu: bool) -> Path:
    """torchrun -m torchtitan.train with our registry, on the resolved TOML."""
    from titanenv.train.jobconfig import ENV_VAR, read

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    if cpu:
        shim = WORK / "bare_cpu.py"
        shim.write_text(CPU_SHIM)
        entry = [str(shim)]
    else:
        entry = ["-m", "torchtitan.train"]
    argv = [*torchrun, *entry, "--module", "titanenv.train.registry", "--config", "from_toml", *read(toml).flags(),
            "--dump_folder", str(dump_folder), *options]
    run(argv, {**env, ENV_VAR: str(toml)}, "bare torchtitan.train")
    return dump_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto",
                        help="gpu: the GPU recipe on one GPU; cpu: the CPU recipe on one CPU process; auto: gpu if "
                             "torch sees one.")
    parser.add_argument("--recipe", default="",
                        help="Recipe name in train_configs/ (default: gpu_smoke on a GPU, debug_cpu on the CPU); "
                             "llama3_1b for the ~1B model.")
    parser.add_argument("--steps", type=int, default=0, help="Steps per run (default: 100 on a GPU, 30 on the CPU).")
    parser.add_argument("--log-freq", type=int, default=0,
                        help="Steps per logging window (default: 10 on a GPU, 5 on the CPU); the first two windows "
                             "are left out.")
    parser.add_argument("--repeat", type=int, default=2, help="Rounds; each runs both sides, in alternating order.")
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "openwebtext_1000.jsonl",
                        help="JSONL corpus data.preprocess tokenizes for both sides.")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "tokenizers" / "gpt2",
                        help="Tokenizer directory (tokenizer.json) of the data and the recipe.")
    args = parser.parse_args()

    missing = missing_modules()
    if missing:
        sys.exit(f"missing on this machine: {', '.join(missing)} (see README.md, Benchmarks: what to install "
                 "for bench/gpu_parity.py)")
    import torch

    gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    if gpu and not torch.cuda.is_available():
        sys.exit("--device gpu: torch sees no GPU here")
    recipe = ROOT / "train_configs" / f"{args.recipe or ('gpu_smoke' if gpu else 'debug_cpu')}.toml"
    steps = args.steps or (100 if gpu else 30)
    log_freq = args.log_freq or (10 if gpu else 5)
    skip = 2 * log_freq - 1  # windows ending at step 1 and at log_freq: start-up, compilation
    if steps < skip + 2 * log_freq:
        sys.exit(f"--steps {steps}: too few to leave two {log_freq}-step windows after the first two")
    for path in (recipe, args.corpus, args.tokenizer):
        if not path.exists():
            sys.exit(f"{path}: no such file (see --recipe, --corpus, --tokenizer)")

    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    home = WORK / "home"  # the local profile's scratch (runs, experiments) goes under here
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "INVOKE_MACHINE": "local", "INVOKE_DATA_TOKENIZER": str(args.tokenizer)}
    if not gpu:  # the same threads for both sides (torchrun sets it only for several processes)
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    prefix = WORK / "data" / "train"
    invoke("data.preprocess", "--input", str(args.corpus), "--output", str(prefix), env=env)
    # The CPU recipe validates on data.valid_output: here the same dataset, on both sides alike.
    env["INVOKE_DATA_VALID_OUTPUT"] = str(prefix)
    options = ["--checkpoint.no-enable", "--training.steps", str(steps), "--metrics.log_freq", str(log_freq),
               "--metrics.enable_tensorboard"]
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    print(f"{recipe.name} on one {device}: {steps} steps, windows of {log_freq} after step {skip}, "
          f"{args.repeat} round(s)", flush=True)

    toml = resolve(recipe, prefix, env)
    results: dict[str, dict[str, list[float]]] = {"ours": {}, "bare": {}}
    best: dict[str, float] = {}  # the fastest window of each side: what a busy machine slows down least
    for round_ in range(args.repeat):
        for side in ("ours", "bare") if round_ % 2 == 0 else ("bare", "ours"):
            started = time.perf_counter()
            if side == "ours":
                folder = ours(recipe, prefix, f"parity-{round_}", options, env)
            else:
                folder = bare(toml, WORK / f"bare-{round_}", options, env, cpu=not gpu)
            seen = figures(folder, skip)
            for key, values in seen.items():
                results[side].setdefault(key, []).append(statistics.median(values))
            best[side] = max(best.get(side, 0.0), *seen["tps"])
            mfu = f", MFU {statistics.median(seen['mfu']):.4f} %" if "mfu" in seen else ""
            print(f"  round {round_ + 1} {side:4}: {statistics.median(seen['tps']):12,.0f} tokens/s{mfu}, "
                  f"loader {statistics.median(seen['loading']):.3f} % of the step "
                  f"({len(seen['tps'])} windows; {time.perf_counter() - started:.0f} s with start-up)", flush=True)

    def median(side: str, key: str) -> float:
        return statistics.median(results[side][key])

    print(f"medians of {args.repeat} round(s):")
    for side, label in (("bare", "bare torchtitan.train"), ("ours", "invoke train.run")):
        mfu = f"   MFU {median(side, 'mfu'):8.4f} %" if "mfu" in results[side] else ""
        print(f"  {label:22} {median(side, 'tps'):12,.0f} tokens/s{mfu}")
    print(f"  tokens/s ours / bare: {median('ours', 'tps') / median('bare', 'tps'):.3f} (target >= 0.98); "
          f"fastest windows: {best['ours'] / best['bare']:.3f}")
    if "mfu" in results["ours"] and "mfu" in results["bare"]:
        note = "" if gpu else " (on a CPU TorchTitan divides by a GPU's peak: only this ratio means anything)"
        print(f"  MFU ours / bare:      {median('ours', 'mfu') / median('bare', 'mfu'):.3f}{note}")
    loading = results["ours"]["loading"]
    print(f"  loader share of a step (train.run, TorchTitan's data_loading(%)): median {statistics.median(loading):.3f} %,"
          f" worst round {max(loading):.3f} % (target <= 1 %)")


if __name__ == "__main__":
    main()
