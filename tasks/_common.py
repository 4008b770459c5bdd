"""What every collection module shares: the task class and config resolution."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import invoke
from invoke import Exit

if TYPE_CHECKING:
    from titanenv.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent

MACHINE_HELP = "Machine profile from machines/ (default: the configured `machine`, local)."


# Third-party modules of the optional extras (pyproject.toml), by extra.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("numpy", "tokenizers", "gigatoken", "orjson", "zstandard", "tqdm", "datasets"), "data"),
    **dict.fromkeys(("torch", "torchtitan", "triton", "transformers", "safetensors", "matplotlib"), "train"),
}


class ProjectTask(invoke.Task):
    """A task whose deliberate library errors end it with one line and status 1."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from titanenv.errors import TitanEnvError

        restore_project_variables()
        try:
            return super().__call__(*args, **kwargs)
        except TitanEnvError as exc:
            raise Exit(f"error: {exc}", code=1) from None
        except ModuleNotFoundError as exc:
            extra = EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])
            if extra is None:
                raise
            import sys

            raise Exit(f"error: {exc.name} (of the {extra!r} extra) is missing from this Python ({sys.executable}): "
                       f"pip install -e '{REPO_ROOT}[{extra}]'", code=1) from None


task = functools.partial(invoke.task, klass=ProjectTask)


# INVOKE_* variables of this project's keys, out of Invoke's sight until a task runs.
_SET_ASIDE: dict[str, str] = {}


def set_aside_project_variables() -> None:
    """Keep Invoke from reading the ``INVOKE_*`` variables of this project's keys.

    Both read invoke.yaml and the ``INVOKE_*`` names, but titanenv.config owns
    every key there beside Invoke's own (``run``, ``sudo``, ``tasks``, ...):
    it validates them and reports a bad value as one line naming the variable.
    Invoke would cast each variable to the type of its key's value in
    invoke.yaml and die with a traceback, before any task runs, on a bad one
    (INVOKE_SLURM_NODES=x) or on any list. So ``tasks.py``, which Invoke
    imports before it reads its configuration, takes those variables out of
    the environment, and the first task to run puts them back
    (:func:`restore_project_variables`), for the loader and child processes.
    """
    invoke_own = tuple(f"INVOKE_{key.upper()}_" for key in invoke.Config.global_defaults())
    for name in [n for n in os.environ if n.startswith("INVOKE_") and not n.startswith(invoke_own)]:
        _SET_ASIDE[name] = os.environ.pop(name)


def restore_project_variables() -> None:
    """Put back what :func:`set_aside_project_variables` took (a no-op the second time)."""
    os.environ.update(_SET_ASIDE)
    _SET_ASIDE.clear()


def load(flags: Mapping[str, Any] | None = None) -> "Config":
    """Resolve the layered configuration; ``flags`` maps dotted keys to CLI values.

    Options left at None do not override anything. The task context is not
    needed: titanenv.config, not Invoke, owns the project's settings.
    """
    from titanenv.config import load_config

    return load_config(REPO_ROOT, flags=flags)


# --- Slurm options shared by every submitting task -------------------------------

SLURM_HELP: dict[str, str] = {
    "nodes": "Nodes to ask for (slurm.nodes).",
    "time": "Time limit, e.g. 00:20:00 or 1-12:00:00 (slurm.time).",
    "partition": "Partition kind: debug, normal or large; the machine profile names the partition (slurm.partition).",
    "account": "Slurm account to charge (slurm.account; default: the machine's).",
    "job_name": "Slurm job name (slurm.job_name; default: named after the task).",
    "dependency": "Start after this job succeeded: a job id, or an sbatch expression such as afterany:123.",
    "dry": "Print the rendered sbatch script and the sbatch command; write and submit nothing.",
}
CHAIN_HELP = "Submit N jobs, each starting after the previous one succeeded (a long training resumes link by link)."


def as_int(value: Any) -> Any:
    """Invoke hands untyped flags over as strings; digits become an int, the rest is the schema's to refuse."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def as_number(flag: str, value: Any, kind: type = int) -> Any:
    """A flag that must be a number (``--steps 20``): None stays None, anything else is one line naming the flag."""
    from titanenv.errors import TitanEnvError

    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise TitanEnvError(f"--{flag}: {value!r} is not a number") from None


def as_float(value: Any) -> Any:
    """A flag's text as a float where it reads as one (``0.05``, ``1``); the rest is the schema's to refuse."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def slurm_flags(nodes: Any = None, time: Any = None, partition: Any = None, account: Any = None,
                job_name: Any = None) -> dict[str, Any]:
    """The ``slurm.*`` config keys of the shared Slurm task flags (None: not given).

    Invoke passes flags without a typed default as strings; a number of nodes
    becomes an int here, anything else is left for the config schema to reject
    with a one-line error naming the flag.
    """
    return {
        "slurm.nodes": as_int(nodes),
        "slurm.time": time,
        "slurm.partition": partition,
        "slurm.account": account,
        "slurm.job_name": job_name,
    }
