"""train.run and train.submit: resolve the TOML, check it and the data, then run or submit torchrun."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from titanenv.config import Config
from titanenv.errors import TitanEnvError
from titanenv.files import write_text_atomic
from titanenv.train.jobconfig import ENV_VAR, JobConfig, read

RESOLVED_NAME = "train.toml"


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
    # [parallelism] degrees filled from "{nodes}"-style placeholders, and the job's shape.
    filled: dict[str, int] = field(default_factory=dict)
    nodes: int = 1
    procs_per_node: int = 1
    # Datasets still being written by preprocessing jobs of ours: prefix -> job ids the job must follow.
    pending: dict[str, list[str]] = field(default_factory=dict)

    def shape(self) -> str:
        """One line: processes, and the degrees the TOML derived from them."""
        world = self.nodes * self.procs_per_node
        line = f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.procs_per_node} = {world} processes"
        if self.filled:
            line += "; " + ", ".join(f"{key} = {value}" for key, value in self.filled.items())
        return line


def procs_per_node(config: Config) -> int:
    """torchrun processes per node of a Slurm job: train.procs_per_node, else one per GPU, else one."""
    return config.settings.train.procs_per_node or config.settings.cluster.gpus_per_node or 1


def read_recipe(config: Config, path: Path) -> JobConfig:
    """A TOML job description with its data placeholders filled: {data_output}, {data_valid_output}, {data_tokenizer}."""
    data_output = str(config.expand_path(config.settings.data.output, "data.output"))
    data_valid_output = str(config.expand_path(config.settings.data.valid_output, "data.valid_output"))
    data_tokenizer = config.expand_path(config.settings.data.tokenizer, "data.tokenizer")
    if data_tokenizer.is_file():
        data_tokenizer = data_tokenizer.parent

    def expand(value: str, key: str) -> str:
        value = value.replace("{data_output}", data_output).replace("{data_tokenizer}", str(data_tokenizer))
        value = value.replace("{data_valid_output}", data_valid_output)
        return str(config.expand_path(value, f"{path.name} {key}"))

    return read(path, expand)


def prepare(config: Config, request: TrainRequest, *, nodes: int = 1, procs: int = 1,
            submitting: bool = False) -> Prepared:
    """Read the recipe (train.config), fill placeholders and flag overrides, check parallelism and data.

    ``nodes`` and ``procs`` (per node) are the job's: they fill ``"{nodes}"``,
    ``"{procs_per_node}"`` and ``"{world_size}"`` in [parallelism]. When
    ``submitting``, a dataset that a queued or running preprocessing job of
    ours is still writing is not opened: the job follows that one and checks
    it when it starts (``Prepared.pending``).
    """
    settings = config.settings.train
    path = config.recipe_path()
    job = read_recipe(config, path)
    for dotted, value in request.overrides.items():
        if value is not None:
            job.set(dotted, value)
    filled = job.fill_parallelism({"nodes": nodes, "procs_per_node": procs, "world_size": nodes * procs})
    if not any(word.startswith("--parallelism.") for word in request.extra):
        check_parallelism(job, nodes * procs)  # else TorchTitan checks the options' final values
    name = settings.name or path.stem
    dump_folder = config.paths.checkpoint_dir / name
    pending = pending_datasets(config, job) if submitting else {}
    check_data(job, skip=set(pending))
    return Prepared(job=job, name=name, dump_folder=dump_folder, text=job.to_toml(), extra=list(request.extra),
                    filled=filled, nodes=nodes, procs_per_node=procs, pending=pending)


def check_parallelism(job: JobConfig, world: int) -> None:
    """The parallel degrees multiply to the number of processes, as TorchTitan demands when it starts."""
    names = ("data_parallel_replicate_degree", "data_parallel_shard_degree", "context_parallel_degree",
             "tensor_parallel_degree", "pipeline_parallel_degree")
    degrees = {name: job.get(f"parallelism.{name}", -1 if name == "data_parallel_shard_degree" else 1)
               for name in names}
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in degrees.values()):
        return  # TorchTitan names the value it cannot parse
    product = math.prod(value for value in degrees.values() if value != -1)
    fits = world % product == 0 if degrees["data_parallel_shard_degree"] == -1 else product == world
    if not fits:
        given = ", ".join(f"{name} = {value}" for name, value in degrees.items() if value != 1)
        raise TrainError(f"{job.path}: [parallelism] {given} does not fit {world} processes "
                         "(their product must equal nodes x processes per node; -1 for the shard degree fills in)")


def check_data(job: JobConfig, skip: set[str] = frozenset()) -> None:
    """Every dataset (but those in ``skip``) opens, is consistent, fits the model's vocabulary and fills a window.

    With ``[validator] enable = true`` the same holds for ``[data]
    valid_datasets``, which must then be given: TorchTitan's own default
    would stream a dataset from the Hub.
    """
    from titanenv.train.dataset import Source, open_sources

    vocab = _model_vocab(job)
    seq_len = int(job.get("training.seq_len", 2048))
    checked = [("datasets", "weights", "training")]
    if job.get("validator.enable", False) is True:
        if not job.data.get("valid_datasets"):
            raise TrainError(f"{job.path}: [validator] enable = true needs [data] valid_datasets "
                             "(datasets written by data.preprocess, e.g. [\"{data_valid_output}\"])")
        checked.append(("valid_datasets", "valid_weights", "validation"))
    for key, weights_key, role in checked:
        datasets = job.data.get(key) or []
        weights = job.data.get(weights_key) or [1.0] * len(datasets)
        if len(weights) != len(datasets):
            raise TrainError(f"{job.path}: [data] has {len(datasets)} {key} but {len(weights)} {weights_key}")
        sources = [Source(Path(p), float(w)) for p, w in zip(datasets, weights) if str(p) not in skip]
        if not sources:
            continue
        for dataset in open_sources(sources, seq_len=seq_len, vocab_size=vocab, role=role, key=f"[data] {key}"):
            dataset.close()


def _model_vocab(job: JobConfig) -> int | None:
    vocab = job.model.get("vocab_size") if job.model.get("flavor", "custom") == "custom" else None
    return int(vocab) if vocab else None


def pending_datasets(config: Config, job: JobConfig) -> dict[str, list[str]]:
    """Datasets of the TOML that preprocessing jobs of ours are still writing: prefix -> their job ids.

    Found from the run records of data.preprocess (its output prefix) and the
    jobs' states; what can be checked now is: the tokenizer that job uses
    fits the model's vocabulary.
    """
    from titanenv.data.tokenizer import load_tokenizer
    from titanenv.runs import RunRecord, scan_runs
    from titanenv.slurm.jobs import lookup

    validated = job.data.get("valid_datasets") or [] if job.get("validator.enable", False) is True else []
    missing = [str(p) for p in [*(job.data.get("datasets") or []), *validated] if not Path(f"{p}.idx").is_file()]
    if not missing:
        return {}
    records = [entry for name in ("preprocess", "preprocess-parallel") for entry in scan_runs(config, name)
               if isinstance(entry, RunRecord) and entry.job_ids]
    found: dict[str, list[str]] = {}
    for prefix in missing:
        writers = [r for r in records if str((r.data.get("extra") or {}).get("data", {}).get("output")) == prefix]
        if not writers:
            continue
        newest = max(writers, key=lambda r: r.submitted)
        states = lookup(newest.job_ids).jobs
        if all(state.ended or state.source == "none" for state in states):
            continue  # it ended: the dataset check below says what is missing
        tokenizer = (newest.data.get("extra") or {}).get("data", {}).get("tokenizer")
        vocab = _model_vocab(job)
        if tokenizer and vocab:
            size = load_tokenizer(tokenizer, backend="hf").vocab_size
            if size > vocab:
                raise TrainError(f"dataset {prefix}: the preprocessing job {newest.job_ids[-1]} writing it uses "
                                 f"{tokenizer} with {size:,} ids, more than the model's vocabulary of {vocab:,}")
        found[prefix] = list(newest.job_ids)
    return found


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
    write_text_atomic(toml, prepared.text)
    return toml


def run_here(config: Config, request: TrainRequest, *, procs: int = 0,
             echo: Callable[[str], None] = print) -> int:
    """torchrun on this machine's CPUs or GPUs, with no Slurm; returns its exit status."""
    from titanenv.runs import new_run

    procs = procs or config.settings.train.procs_per_node or _local_devices()
    prepared = _prepare_any(config, request, nodes=1, procs=procs)
    run = new_run(config, "train")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    toml = run.path / RESOLVED_NAME
    args = _args(prepared, toml, cpu=_local_gpus() == 0)
    command = [*torchrun, *args]
    if request.dry:
        echo(f"# {toml} (dry run: nothing written or started)")
        echo(f"# {_shape(prepared)}")
        echo(prepared.text.rstrip("\n"))
        echo("# would run: " + " ".join(_quote(w) for w in command))
        echo("# torchtitan: " + " ".join(_quote(w) for w in _torchtitan_words(prepared, toml, args)))
        return 0
    from titanenv.train import exclusive

    with exclusive.hold(config, prepared.dump_folder, echo=echo):  # one training per checkpoint folder
        return _run_here(config, prepared, run, procs, toml, command, echo)


def _run_here(config: Config, prepared: Prepared, run, procs: int, toml: Path,
              command: list[str], echo: Callable[[str], None]) -> int:
    from titanenv.runs import write_record

    toml = write_resolved(prepared, toml)
    _check_any(config, prepared, toml, cpu=_local_gpus() == 0, here=True)
    prepared.dump_folder.mkdir(parents=True, exist_ok=True)
    write_record(config, run, job_ids=[], script=None,
                 extra={"train": {"command": command, **_record(prepared)}})
    echo(f"run {run.path}; checkpoints in {prepared.dump_folder / 'checkpoint'}")
    env = dict(os.environ)
    if procs > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(command, env=env, cwd=run.path)


def _local_devices() -> int:
    return max(_local_gpus(), 1)


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


# Our TorchTitan (Prepared) or a checkout's own (checkout.CheckoutJob): the
# few steps where they differ.

def _prepare_any(config: Config, request: TrainRequest, *, nodes: int, procs: int, submitting: bool = False):
    from titanenv.train import checkout

    selected = checkout.selected(config)
    if selected is None:
        return prepare(config, request, nodes=nodes, procs=procs, submitting=submitting)
    return checkout.prepare(config, selected, request.overrides, request.extra)


def _with_pending(dependency: str | None, prepared, echo: Callable[[str], None]) -> str | None:
    """The user's dependency, and afterok on the preprocessing jobs still writing the job's datasets."""
    from titanenv.slurm import normalize_dependency

    pending = getattr(prepared, "pending", {})
    if not pending:
        return dependency
    ids = list(dict.fromkeys(job_id for job_ids in pending.values() for job_id in job_ids))
    for prefix, job_ids in pending.items():
        echo(f"dataset {prefix} is being written by job {','.join(job_ids)}: training follows it "
             "and checks the dataset when it starts")
    parts = [normalize_dependency(dependency)] if dependency else []
    return ",".join([*parts, "afterok:" + ":".join(ids)])


def _shape(prepared) -> str:
    """The job's shape (nodes x processes, derived degrees); a checkout's TOML is its own."""
    return prepared.shape() if isinstance(prepared, Prepared) else "a checkout's own TOML: its degrees as it sets them"


def _args(prepared, toml: Path, *, cpu: bool) -> list[str]:
    """What follows ``torchrun [options]``; ``cpu``: the job has no GPU."""
    if isinstance(prepared, Prepared):
        return train_args(prepared, toml)
    return prepared.args(toml, cpu=cpu)


def _torchtitan_words(prepared, toml: Path, args: list[str]) -> list[str]:
    """TorchTitan's own command line: a checkout's entry point and its options are just that."""
    return torchtitan_command(prepared, toml) if isinstance(prepared, Prepared) else args


def _check_any(config: Config, prepared, toml: Path, *, cpu: bool, here: bool) -> None:
    """Our TOML through TorchTitan's own parser; for a checkout, which torchtitan the job imports and its parser."""
    if isinstance(prepared, Prepared) and here:
        validate_with_torchtitan(prepared, toml)
        return
    if isinstance(prepared, Prepared):
        check_in_job_environment(config, prepared, toml)
        return
    from titanenv.train import checkout

    checkout.check_checkout(config, prepared, toml, cpu=cpu, here=here)


def _record(prepared) -> dict[str, str]:
    """What the run record says about the training: its output folder, TOML and (a checkout's) TorchTitan."""
    if isinstance(prepared, Prepared):
        return {"dump_folder": str(prepared.dump_folder), "config": str(prepared.job.path)}
    return {"dump_folder": str(prepared.dump_folder), "config": str(prepared.path),
            "torchtitan": str(prepared.checkout.root)}


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def submit(config: Config, request: TrainRequest, echo: Callable[[str], None] = print):
    """Render the machine's training script and submit it (a chain of jobs resuming each other)."""
    from titanenv import sbatch, slurm
    from titanenv.launch import unsupported_gpus
    from titanenv.runs import new_run

    problem = unsupported_gpus(config)
    if problem:
        raise TrainError(f"{problem}: a training job there would die at its first CUDA call; pin an image with an "
                         f"older CUDA for {config.machine} (container.image and container.contents in "
                         f"machines/{config.machine}.yaml or your user file), or train on another machine")
    procs = procs_per_node(config)
    prepared = _prepare_any(config, request, nodes=config.settings.slurm.nodes, procs=procs, submitting=True)
    dependency = _with_pending(request.dependency, prepared, echo)
    if not request.dry:
        from titanenv.train import exclusive

        exclusive.check_submission(config, prepared.dump_folder, request.dependency)
    run = new_run(config, "train")
    # Beside the run directory: submission creates that directory itself, and
    # the job must find the TOML the moment it starts.
    toml = run.path.with_name(f"{run.path.name}.{RESOLVED_NAME}")
    args = _args(prepared, toml, cpu=config.settings.cluster.gpus_per_node == 0)
    script = sbatch.train_script(
        config, run_dir=run.path, command=args, nproc_per_node=procs,
        # Only our entry point saves and stops on the warning signal.
        stoppable=isinstance(prepared, Prepared),
    )
    if request.dry:
        echo(f"# {toml}: {_shape(prepared)}")
        for line in prepared.text.rstrip("\n").splitlines():
            echo(f"#   {line}")
        echo("# torchtitan: " + " ".join(_quote(w) for w in _torchtitan_words(prepared, toml, args)))
    else:
        write_resolved(prepared, toml)
        try:
            _check_any(config, prepared, toml, cpu=config.settings.cluster.gpus_per_node == 0, here=False)
        except TitanEnvError:
            toml.unlink(missing_ok=True)
            raise
    submission = slurm.submit(
        config, run, script, dry=request.dry, chain=request.chain, dependency=dependency, echo=echo,
        extra={"train": _record(prepared)},
    )
    if not request.dry:
        echo(f"checkpoints: {prepared.dump_folder / 'checkpoint'} (a later submission resumes from the latest)")
    return submission
