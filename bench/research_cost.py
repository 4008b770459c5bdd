"""What validation and the export add to the main job, on CPU, as ratios against the same job without them.

1. **Validation.** The main job's training (``debug_cpu.toml``: 40 steps, one
   process, validation as its ``[validator]`` says: 1 batch at step 1 and
   every 20 steps) against the same training with ``--validator.no-enable``, the two
   interleaved, ``--repeat`` times. TorchTitan's structured logs time every
   step (``step_end``) and every validation inside it (``eval_end``), so
   each run gives its own training time (steps less validations) and
   validation time. Printed, as medians over the repeats:

   - *in-run*: validation time / training time of the same run (target <= 5 %);
   - *across runs*: summed step time with validation / without (two processes
     on a shared machine: noisier than the in-run figure).

   ``--one-pass`` adds runs with ``--validator.steps -1`` (every window of
   the held-out part at each validation) to show what a full pass costs.
2. **Export.** ``invoke research.export --overwrite`` of the final checkpoint
   (a fresh process: imports, DCP load, conversion, safetensors and tokenizer
   files) and the conversion alone (``titanenv.research.export.export`` in
   this process, imports warm): median seconds, and as a ratio to the
   training time of the runs without validation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from benchlib import ROOT, invoke

WORK = ROOT / ".work" / "bench-research-cost"


def timings(dump: Path) -> tuple[float, float]:
    """(seconds of training steps less validation, seconds of validation) from rank 0's structured log."""
    (log,) = (dump / "structured_logs").glob("training.global_rank_0.*.jsonl")
    steps = evals = 0.0
    for line in log.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("log_type_name") == "step_end":
            steps += float(event["value"]) / 1e3
        elif event.get("log_type_name") == "eval_end":
            evals += float(event["value"]) / 1e3
    return steps - evals, evals


def train(name: str, env: dict[str, str], options: list[str]) -> tuple[float, float]:
    invoke("train.run", "--name", name, "--", "--checkpoint.no-enable", *options, env=env)
    return timings(WORK / "home" / "experiments" / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="pairs of trainings, and exports (medians)")
    parser.add_argument("--one-pass", action="store_true", help="also time validation with [validator] steps = -1")
    args = parser.parse_args()

    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "home").mkdir(parents=True)
    env = {**os.environ, "HOME": str(WORK / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "INVOKE_PATHS_CHECKPOINT_DIR": str(WORK / "home" / "experiments"),
           "INVOKE_PATHS_RUNS_DIR": str(WORK / "home" / "runs"), "INVOKE_PATHS_DATA_DIR": str(WORK / "data"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    invoke("data.preprocess", "data.preprocess", "--valid", env=env)  # the sample corpus's two parts, as the main job

    variants = {"off": ["--validator.no-enable"], "on": []}
    if args.one_pass:
        variants["one-pass"] = ["--validator.steps", "-1"]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    print(f"1. validation in the main job's training (debug_cpu.toml, 40 steps, 1 process), {args.repeat} round(s)")
    for round_ in range(args.repeat):
        for name, options in variants.items():
            trained, validated = train(f"{name}-{round_}", env, options)
            runs[name].append((trained, validated))
            print(f"  round {round_ + 1} {name:8}: training {trained:6.2f} s, validation {validated:5.2f} s", flush=True)
    for name in variants:
        if name == "off":
            continue
        in_run = statistics.median(v / t for t, v in runs[name])
        across = statistics.median((t + v) / (off_t + off_v) for (t, v), (off_t, off_v) in zip(runs[name], runs["off"]))
        print(f"  {name:8}: in-run validation / training {in_run:.3f} (target <= 0.05 for 'on'); "
              f"across runs with / without {across:.3f}")

    print(f"2. research.export of the final checkpoint (step 40), {args.repeat} time(s)")
    # A checkpoint to export: the last 'on' run, again with checkpoints.
    invoke("train.run", "--name", "exported", env=env)
    commands = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        invoke("research.export", "--name", "exported", "--overwrite", env=env)
        commands.append(time.perf_counter() - started)
    os.environ.update({key: env[key] for key in env if key.startswith(("INVOKE_", "HF_", "TRANSFORMERS_"))})
    os.environ["HOME"] = env["HOME"]
    from titanenv.config import load_config
    from titanenv.research.experiment import find_experiment
    from titanenv.research.export import ExportRequest, export

    config = load_config(ROOT, flags={"train.name": "exported"})
    experiment = find_experiment(config)
    request = ExportRequest(checkpoint_folder=experiment.checkpoint_folder, step=None, job=experiment.job,
                            output=WORK / "export", dtype="float32", overwrite=True)
    export(request, echo=lambda _line: None)  # imports and first-call costs out of the way
    inner = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        export(request, echo=lambda _line: None)
        inner.append(time.perf_counter() - started)
    training = statistics.median(t + v for t, v in runs["off"])
    command, conversion = statistics.median(commands), statistics.median(inner)
    print(f"  invoke research.export: median {command:.2f} s ({command / training:.3f} x the training without "
          f"validation, {training:.1f} s); the conversion alone: {conversion:.2f} s ({conversion / training:.3f} x)")


if __name__ == "__main__":
    main()
