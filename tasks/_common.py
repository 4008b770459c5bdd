"""What every collection module shares: the task class and config resolution."""

from __future__ import annotations

import functools
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


def _leave_project_env_vars_raw() -> None:
    """Let the project's loader, not Invoke, parse INVOKE_* values of its own keys.

    Invoke casts each INVOKE_* variable to the type of the value in
    invoke.yaml and dies with a traceback on a bad one (INVOKE_SLURM_NODES=x,
    or any list). titanenv.config reads the same variables with typed
    validation and a one-line error naming the variable, so for keys outside
    Invoke's (and Fabric's) own defaults Invoke keeps the raw string.
    """
    import sys

    from invoke.env import Environment

    if getattr(Environment._path_set, "_project_raw", False):
        return
    invoke_path_set = Environment._path_set

    def _path_set(self: Environment, key_path: Any, value: str) -> None:
        own_keys = set(invoke.Config.global_defaults())
        fabric_config = sys.modules.get("fabric.config")
        if fabric_config is not None:
            own_keys.update(fabric_config.Config.global_defaults())
        if key_path and key_path[0] not in own_keys:
            node = self.data
            for key in key_path[:-1]:
                node = node.setdefault(key, {})
            node[key_path[-1]] = value
            return
        invoke_path_set(self, key_path, value)

    _path_set._project_raw = True  # type: ignore[attr-defined]
    Environment._path_set = _path_set  # type: ignore[method-assign]


_leave_project_env_vars_raw()


def load(c: invoke.Context, flags: Mapping[str, Any] | None = None) -> "Config":
    """Resolve the layered configuration; ``flags`` maps dotted keys to CLI values.

    Options left at None do not override anything.
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


def as_number(value: Any) -> Any:
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
