"""train.run and train.submit: resolve the TOML, check it and the data, then run or submit torchrun."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from titanenv.config import Config
from titanenv.errors import TitanEnvError
from titanenv.train.jobconfig import ENV_VAR, JobConfig, JobConfigError, read

RESOLVED_NAME = "train.toml"
# Task flags and the TOML fields they set.
FLAG_FIELDS = {
    "steps": "training.steps",
    "seq_len": "training.seq_len",
    "batch_size": "training.local_batch_size",
    "lr": "optimizer.lr",
    "checkpoint_interval": "checkpoint.interval",
}


class TrainError(TitanEnvError):
    """A training job cannot start."""


@dataclass
class TrainRequest:
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted TOML field -> value
    dry: bool = False
    chain: int = 1
    dependency: str | None = None
    extra: list[str] = field(default_factory=list)  # more TorchTitan options, last so they win


@dataclass
class Prepared:
    job: JobConfig
    name: str
    dump_folder: Path
    text: str  # the resolved TOML
    extra: list[str] = field(default_factory=list)


def prepare(config: Config, request: TrainRequest) -> Prepared:
    """Read the TOML named by train.config, fill placeholders and flag overrides, check the data."""
    settings = config.settings.train
    path = config.expand_path(settings.config, "train.config")
    data_output = str(config.expand_path(config.settings.data.output, "data.output"))
    data_tokenizer = config.expand_path(config.settings.data.tokenizer, "data.tokenizer")
    if data_tokenizer.is_file():
        data_tokenizer = data_tokenizer.parent

    def expand(value: str, key: str) -> str:
        value = value.replace("{data_output}", data_output).replace("{data_tokenizer}", str(data_tokenizer))
        return str(config.expand_path(value, f"{path.name} {key}"))

    job = read(path, expand)
    for dotted, value in request.overrides.items():
        if value is not None:
            job.set(dotted, value)
    name = settings.name or path.stem
    dump_folder = config.paths.checkpoint_dir / name
    check_data(job)
    return Prepared(job=job, name=name, dump_folder=dump_folder, text=job.to_toml(), extra=list(request.extra))


def check_data(job: JobConfig) -> None:
    """Every dataset opens, is consistent, fits the model's vocabulary and fills a window."""
    from titanenv.train.dataset import Source, open_sources

    datasets = job.data.get("datasets") or []
    weights = job.data.get("weights") or [1.0] * len(datasets)
    if len(weights) != len(datasets):
        raise TrainError(f"{job.path}: [data] has {len(datasets)} datasets but {len(weights)} weights")
    vocab = job.model.get("vocab_size") if job.model.get("flavor", "custom") == "custom" else None
    seq_len = int(job.get("training.seq_len", 2048))
    datasets_opened = open_sources([Source(Path(p), float(w)) for p, w in zip(datasets, weights)],
                                   seq_len=seq_len, vocab_size=int(vocab) if vocab else None)
    for dataset in datasets_opened:
        dataset.close()


def train_args(prepared: Prepared, toml: Path) -> list[str]:
    """What follows ``torchrun [options]``: our entry point, the resolved TOML, the output folder."""
    return ["-m", "titanenv.train", str(toml), "--dump_folder", str(prepared.dump_folder), *prepared.extra]


def torchtitan_command(prepared: Prepared, toml: Path) -> list[str]:
    """TorchTitan's own command line, as ``python -m titanenv.train`` hands it over."""
    return ["torchtitan.train", "--module", "titanenv.train.registry", "--config", "from_toml",
            *prepared.job.flags(), "--dump_folder", str(prepared.dump_folder), *prepared.extra]


def validate_with_torchtitan(prepared: Prepared, toml: Path) -> None:
    """Parse the command line with TorchTitan's own ConfigManager: unknown keys fail here, not in the job."""
    from titanenv.train import cpu

    if cpu.needed():
        cpu.apply()
    from torchtitan.config import ConfigManager

    args = torchtitan_command(prepared, toml)[1:]
    captured = io.StringIO()
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(toml)
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            ConfigManager().parse_args(args)
    except SystemExit:
        raise TrainError(f"{prepared.job.path}: {_tyro_problem(captured.getvalue())}") from None
    except (ValueError, TypeError, ImportError) as exc:
        raise TrainError(f"{prepared.job.path}: TorchTitan refuses the config: {exc}") from None
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def check_in_job_environment(config: Config, prepared: Prepared, toml: Path) -> None:
    """Check the options with TorchTitan where the job will run, when this Python lacks it.

    A login node's task venv is often made without the ``train`` extra (the
    container brings torch); there the machine's container or venv does the
    check, still before anything is submitted.
    """
    try:
        validate_with_torchtitan(prepared, toml)
        return
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("torch", "torchtitan", "triton"):
            raise
        missing = exc.name
    from titanenv.launch import job_launcher, job_python

    argv = [*job_launcher(config), job_python(config), "-m", "titanenv.train", "--check",
            *train_args(prepared, toml)[2:]]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=toml.parent)
    except OSError as exc:
        done = subprocess.CompletedProcess(argv, 127, "", str(exc))
    if done.returncode == 0:
        return
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {done.returncode}"
    if done.returncode == 1 and last.startswith("error: "):
        # Name the user's TOML, not the resolved copy the job environment read.
        raise TrainError(last.removeprefix("error: ").replace(str(toml), str(prepared.job.path), 1))
    raise TrainError(f"{prepared.job.path}: cannot check it with TorchTitan: this Python ({sys.executable}) lacks "
                     f"{missing} and the job environment failed ({last}); run env.setup there, "
                     "or pip install -e '.[train]' here")


def _tyro_problem(text: str) -> str:
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    for line in plain.splitlines():
        line = line.strip(" │╭╮╰╯─")
        if line.startswith("Unrecognized options:"):
            option = line.split(":", 1)[1].strip().split(",")[0].strip()
            key = option.lstrip("-").replace("-", "_")
            return f"TorchTitan does not know {key} (from the TOML's [{key.split('.')[0]}] section or a flag)"
        if "Error parsing" in line or "Invalid" in line:
            return f"TorchTitan refuses the config: {line}"
    lines = [line.strip(" │╭╮╰╯─") for line in plain.splitlines() if line.strip(" │╭╮╰╯─")]
    return f"TorchTitan refuses the config: {lines[0] if lines else 'unknown reason'}"


def write_resolved(prepared: Prepared, toml: Path) -> Path:
    toml.parent.mkdir(parents=True, exist_ok=True)
    temporary = toml.with_name(f".{toml.name}.tmp-{os.getpid()}")
    temporary.write_text(prepared.text, encoding="utf-8")
    os.replace(temporary, toml)
    return toml


def run_here(config: Config, request: TrainRequest, *, procs: int = 0,
             echo: Callable[[str], None] = print) -> int:
    """torchrun on this machine's CPUs or GPUs, with no Slurm; returns its exit status."""
    from titanenv.runs import new_run

    prepared = prepare(config, request)
    run = new_run(config, "train")
    procs = procs or config.settings.train.procs_per_node or _local_devices()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    toml = run.path / RESOLVED_NAME
    command = [*torchrun, *train_args(prepared, toml)]
    if request.dry:
        echo(f"# {toml} (dry run: nothing written or started)")
        echo(prepared.text.rstrip("\n"))
        echo("# would run: " + " ".join(_quote(w) for w in command))
        echo("# torchtitan: " + " ".join(_quote(w) for w in torchtitan_command(prepared, toml)))
        return 0
    from titanenv.train import exclusive

    with exclusive.hold(config, prepared.dump_folder, echo=echo):  # one training per checkpoint folder
        return _run_here(config, prepared, run, procs, toml, command, echo)


def _run_here(config: Config, prepared: Prepared, run, procs: int, toml: Path,
              command: list[str], echo: Callable[[str], None]) -> int:
    from titanenv.runs import write_record

    toml = write_resolved(prepared, toml)
    validate_with_torchtitan(prepared, toml)
    prepared.dump_folder.mkdir(parents=True, exist_ok=True)
    write_record(config, run, job_ids=[], script=None,
                 extra={"train": {"command": command, "dump_folder": str(prepared.dump_folder),
                                  "config": str(prepared.job.path)}})
    echo(f"run {run.path}; checkpoints in {prepared.dump_folder / 'checkpoint'}")
    env = dict(os.environ)
    if procs > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(command, env=env, cwd=run.path)


def _local_devices() -> int:
    try:
        import torch

        return max(torch.cuda.device_count(), 1)
    except ImportError:
        return 1


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def submit(config: Config, request: TrainRequest, echo: Callable[[str], None] = print):
    """Render the machine's training script and submit it (a chain of jobs resuming each other)."""
    from titanenv import sbatch, slurm
    from titanenv.runs import new_run

    prepared = prepare(config, request)
    if not request.dry:
        from titanenv.train import exclusive

        exclusive.check_submission(config, prepared.dump_folder, request.dependency)
    run = new_run(config, "train")
    # Beside the run directory: submission creates that directory itself, and
    # the job must find the TOML the moment it starts.
    toml = run.path.with_name(f"{run.path.name}.{RESOLVED_NAME}")
    script = sbatch.train_script(
        config, run_dir=run.path, command=train_args(prepared, toml),
        nproc_per_node=config.settings.train.procs_per_node,
    )
    if request.dry:
        echo(f"# {toml}:")
        for line in prepared.text.rstrip("\n").splitlines():
            echo(f"#   {line}")
        echo("# torchtitan: " + " ".join(_quote(w) for w in torchtitan_command(prepared, toml)))
    else:
        write_resolved(prepared, toml)
        try:
            check_in_job_environment(config, prepared, toml)
        except TitanEnvError:
            toml.unlink(missing_ok=True)
            raise
    submission = slurm.submit(
        config, run, script, dry=request.dry, chain=request.chain, dependency=request.dependency, echo=echo,
        extra={"train": {"dump_folder": str(prepared.dump_folder), "config": str(prepared.job.path)}},
    )
    if not request.dry:
        echo(f"checkpoints: {prepared.dump_folder / 'checkpoint'} (a later submission resumes from the latest)")
    return submission
