"""data.preprocess on a machine: run in place, or plan here and submit the work as a Slurm job."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from titanenv.config import Config
from titanenv.data import preprocess as pre
from titanenv.errors import TitanEnvError
from titanenv.files import human_size


@dataclass(frozen=True)
class PreprocessRequest:
    parallel: bool = False
    local: bool = False  # run in place even on a cluster
    submit: bool = False  # submit even on the local machine
    overwrite: bool = False
    dry: bool = False
    dependency: str | None = None


def in_place(config: Config, request: PreprocessRequest) -> bool:
    if request.local and request.submit:
        raise TitanEnvError("--local and --submit contradict each other; give one")
    return request.local or (config.settings.cluster.local and not request.submit)


def preprocess(config: Config, request: PreprocessRequest, echo: Callable[[str], None] = print):
    """Tokenize ``config.settings.data`` here or through Slurm; returns the Summary or the Submission."""
    data = config.settings.data
    output = config.expand_path(data.output, "data.output")
    tokenizer = config.expand_path(data.tokenizer, "data.tokenizer")
    here = in_place(config, request)
    workers = data.workers or (pre.cpus_available() if here else config.cores_per_node // data.parallel_tasks_per_node)
    started = time.perf_counter()
    from titanenv.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer, backend=data.backend, eod_token=data.eod_token)
    # One writer per output: taken before anything is written (--overwrite included), held until the
    # output is complete here, or handed to the submitted job.
    lock = None if request.dry else pre.lock_output(output, echo=echo)
    try:
        with pre.interruptible():
            return _preprocess(config, request, here, workers, tok, tokenizer, output, started, lock, echo)
    except OSError as exc:
        raise pre.file_system_error(exc, pre.parts_dir(output)) from None
    except KeyboardInterrupt:
        raise pre.interrupted(pre.parts_dir(output)) from None
    finally:
        if lock is not None:
            lock.release()


def _preprocess(config: Config, request: PreprocessRequest, here: bool, workers: int, tok, tokenizer: Path,
                output: Path, started: float, lock, echo: Callable[[str], None]):
    data = config.settings.data
    plan = pre.prepare(
        list(data.inputs),
        base=config.repo_root,
        tokenizer=str(tokenizer),
        output=output,
        text_key=data.text_key,
        backend=data.backend,
        eod_token=data.eod_token,
        chunk_bytes=data.chunk_mb << 20 if data.chunk_mb else None,
        workers=workers * (_ranks(config) if request.parallel and not here else 1),
        strict=data.strict,
        max_skipped_fraction=data.max_skipped_fraction,
        overwrite=request.overwrite,
        write=not request.dry,
        loaded=tok,
    )
    if here:
        if request.dry:
            for line in describe_plan(plan, 1):
                echo(line)
            echo(f"# dry run: would tokenize here with {workers} worker process(es); nothing written")
            return None
        done = sum(plan.is_done(c) for c in plan.chunks)
        if done:
            echo(f"resuming: {done} of {len(plan.chunks)} chunk(s) done by an earlier run")
        progress = pre.Progress(interval=data.progress_interval)
        summary = pre.run(plan, workers=data.workers, progress=progress, tok=tok)
        for line in summary.lines():
            echo(line)
        echo(f"total {time.perf_counter() - started:.2f} s")
        return summary
    return _submit(config, request, plan, lock, echo)


def _ranks(config: Config) -> int:
    return config.settings.slurm.nodes * config.settings.data.parallel_tasks_per_node


def describe_plan(plan: pre.Plan, ranks: int) -> list[str]:
    lines = [
        f"inputs: {len(plan.inputs)} file(s), {human_size(plan.total_bytes)} -> {plan.settings.output}.bin/.idx",
        f"tokenizer: {plan.settings.tokenizer} (end-of-document id {plan.settings.eod_id}, {plan.settings.dtype})",
        f"chunks: {len(plan.chunks)}, {sum(plan.is_done(c) for c in plan.chunks)} done",
    ]
    if ranks > 1:
        lines.extend(plan.describe_assignment(ranks))
    return lines


def _submit(config: Config, request: PreprocessRequest, plan: pre.Plan, lock, echo: Callable[[str], None]):
    from titanenv import sbatch, slurm
    from titanenv.launch import job_python
    from titanenv.runs import new_run

    data = config.settings.data
    run = new_run(config, "preprocess-parallel" if request.parallel else "preprocess")
    python = job_python(config)
    step = [python, "-m", "titanenv.data"]
    tail = [str(plan.parts_dir), "--progress-interval", f"{data.progress_interval:g}"]
    if data.workers:
        tail += ["--workers", str(data.workers)]
    if lock is not None:  # the job's tasks share the lock taken here
        tail += ["--lock-token", lock.holder.token]
    if request.parallel:
        script = sbatch.preprocess_parallel_script(
            config, run_dir=run.path, command=[*step, "work", *tail],
            ntasks_per_node=data.parallel_tasks_per_node, dependency="",
        )
        ranks = _ranks(config)
    else:
        script = sbatch.preprocess_script(config, run_dir=run.path, command=[*step, "run", *tail])
        ranks = 1
    if request.dry:
        for line in describe_plan(plan, ranks):
            echo(f"# {line}")
    submission = slurm.submit(
        config, run, script, dry=request.dry, dependency=request.dependency, echo=echo,
        extra={"data": {"output": plan.settings.output, "parts": str(plan.parts_dir),
                        "tokenizer": str(plan.settings.tokenizer),
                        "inputs": plan.settings.inputs, "chunks": len(plan.chunks), "ranks": ranks}},
    )
    if lock is not None:
        lock.hand_to_job(submission.job_id)
    if not request.dry:
        echo(f"output: {plan.settings.output}.bin/.idx once the job ends ({len(plan.chunks)} chunks over {ranks} task(s))")
    return submission
