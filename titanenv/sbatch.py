"""Render site-specific sbatch scripts from Jinja2 templates.

Every value a template puts into the script must pass through a quoting
filter (``q``, ``qjoin``, ``envname``, ``sbatch_option``, ``sbatch_value``,
``comment``); rendering fails on any ``{{ ... }}`` that did not, so a path
with spaces, quotes or ``$(...)`` can neither break nor inject into a
script. Integers pass as they are. ``#SBATCH`` values are quoted for
sbatch's own parser, which differs from the shell's.

Templates live in ``sbatch_templates/``; a machine may override one with
``sbatch_templates/<machine>/<name>``, and a profile's ancestors are searched
in between (``jwb`` -> ``jsc`` -> common).
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from titanenv.config import Config
from titanenv.config.schema import (
    PARTITION_KINDS, SBATCH_OPTION_NAME, PartitionSpec, sbatch_value_problem, slurm_time_seconds,
)
from titanenv.container.session import uses_container
from titanenv.errors import ConfigError, RenderError
from titanenv.names import is_env_name
from titanenv.launch import job_environment, job_launcher, job_python, stop_guard
from titanenv.launch import torchrun as launch_torchrun

TEMPLATES_DIR = "sbatch_templates"
TEMPLATES = ("export.sbatch.j2", "preprocess.sbatch.j2", "preprocess_parallel.sbatch.j2", "train.sbatch.j2")
_OPTION_NAME = SBATCH_OPTION_NAME


class Quoted(str):
    """Text that is safe to paste into a shell script as it is."""


def q(value: Any) -> Quoted:
    """One shell word, quoted only where needed."""
    if isinstance(value, bool) or value is None:
        raise RenderError(f"refusing to render {value!r} as a shell word")
    return Quoted(shlex.quote(str(value)))


def qjoin(values: Iterable[Any]) -> Quoted:
    """Several shell words: an argument vector that survives exactly."""
    if isinstance(values, (str, bytes)):
        raise RenderError(f"qjoin needs a list of words, got the string {values!r}")
    return Quoted(" ".join(q(v) for v in values))


def envname(name: Any) -> Quoted:
    """An environment variable name, checked rather than quoted."""
    if not is_env_name(name):
        raise RenderError(f"{name!r} is not an environment variable name")
    return Quoted(name)


def comment(value: Any) -> Quoted:
    """Text for a ``#`` comment line: newlines, which would end the comment, become spaces."""
    return Quoted(" ".join(str(value).splitlines()))


def sbatch_value(value: Any) -> Quoted:
    """The value of an ``#SBATCH --name=value`` line, quoted the way sbatch reads it back.

    sbatch groups words with quotes like a shell, but takes ``\\`` as an escape
    inside quotes too: shell quoting with every backslash doubled is read
    back exactly (``slurm.script.sbatch_arguments``). A line break cannot be
    carried; configured values are refused earlier, naming their setting.
    """
    if isinstance(value, bool) or value is None:
        raise RenderError(f"refusing to render {value!r} as an #SBATCH value")
    problem = sbatch_value_problem(str(value))
    if problem:
        raise RenderError(f"#SBATCH value {str(value)[:60]!r} {problem}")
    return Quoted(shlex.quote(str(value)).replace("\\", "\\\\"))


def sbatch_option(name: Any) -> Quoted:
    """An #SBATCH long-option name such as ``cpus-per-task``."""
    if not isinstance(name, str) or not _OPTION_NAME.match(name):
        raise RenderError(f"{name!r} is not an sbatch option name")
    return Quoted(name)


def _finalize(value: Any) -> Any:
    if isinstance(value, Quoted):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise RenderError(f"unquoted value {str(value)[:60]!r} in a template: pipe it through | q")


@dataclass(frozen=True)
class JobResources:
    """What one job asks Slurm for; rendered as #SBATCH lines."""

    job_name: str
    nodes: int
    ntasks_per_node: int
    cpus_per_task: int
    time: str
    output: str
    error: str
    gpus_per_node: int = 0
    partition: str = ""
    qos: str = ""
    account: str = ""
    dependency: str = ""
    options: Mapping[str, str] = field(default_factory=dict)

    def directives(self) -> list[tuple[str, str | int]]:
        """``(option, value)`` pairs in the order the original scripts used."""
        pairs: list[tuple[str, str | int]] = [
            ("job-name", self.job_name),
            ("nodes", self.nodes),
            ("ntasks-per-node", self.ntasks_per_node),
            ("cpus-per-task", self.cpus_per_task),
        ]
        options = dict(self.options)
        if "threads-per-core" in options:
            pairs.append(("threads-per-core", options.pop("threads-per-core")))
        if self.gpus_per_node:
            pairs.append(("gres", f"gpu:{self.gpus_per_node}"))
        pairs.append(("time", self.time))
        for name, value in (("account", self.account), ("partition", self.partition), ("qos", self.qos)):
            if value:
                pairs.append((name, value))
        if self.dependency:
            pairs.append(("dependency", self.dependency))
        pairs += [("output", self.output), ("error", self.error)]
        pairs += sorted(options.items())
        return pairs


def partition_for(config: Config, kind: str, *, gpu: bool) -> PartitionSpec:
    """The partition/QoS of a job kind (debug, normal, large) on this machine.

    CPU jobs use the machine's CPU-only partitions where it has them.
    """
    if kind not in PARTITION_KINDS:
        raise ConfigError(
            f"unknown partition kind {kind!r}; use one of: {', '.join(PARTITION_KINDS)}",
            source=config.origin("slurm.partition"),
            key="slurm.partition",
        )
    partitions = config.settings.cluster.partitions
    chosen = partitions.gpu if gpu or partitions.cpu is None else partitions.cpu
    return getattr(chosen, kind)


def resources_for(
    config: Config,
    *,
    job_name: str,
    gpu: bool,
    log_dir: Path,
    ntasks_per_node: int = 1,
    nodes: int | None = None,
    cpus_per_task: int | None = None,
    dependency: str = "",
) -> JobResources:
    """A job's resources from the resolved ``slurm`` settings and the machine's facts.

    CPUs per task default to the node's cores shared evenly among its tasks;
    GPU jobs ask for every GPU of the node.
    """
    slurm = config.settings.slurm
    cluster = config.settings.cluster
    spec = partition_for(config, slurm.partition, gpu=gpu)
    # The other values reaching #SBATCH lines are checked with their settings (config.schema).
    problem = sbatch_value_problem(str(log_dir))
    if problem:
        raise ConfigError(
            f"the job's log directory {str(log_dir)!r} {problem} (--output)",
            source=config.origin("paths.runs_dir"),
            key="paths.runs_dir",
        )
    return JobResources(
        job_name=slurm.job_name or job_name,
        nodes=nodes or slurm.nodes,
        ntasks_per_node=ntasks_per_node,
        cpus_per_task=cpus_per_task or max(1, config.cores_per_node // ntasks_per_node),
        time=slurm.time,
        output=str(log_dir / "%x-%j.out"),
        error=str(log_dir / "%x-%j.err"),
        gpus_per_node=cluster.gpus_per_node if gpu else 0,
        partition=spec.partition,
        qos=spec.qos,
        account=slurm.account or cluster.account,
        dependency=dependency,
        options={**cluster.sbatch_options, **slurm.options},
    )


def _template_dirs(config: Config) -> list[Path]:
    root = config.repo_root / TEMPLATES_DIR
    dirs = [root / name for name in reversed(config.machine_chain)]
    return [d for d in dirs if d.is_dir()] + [root]


@functools.lru_cache(maxsize=16)
def _environment(search_path: tuple[str, ...]) -> Any:
    """One Jinja2 environment per template search path, so each template is compiled once.

    Its loader still notices edited template files (``auto_reload``).
    """
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(search_path)),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters.update(
        q=q, qjoin=qjoin, envname=envname, sbatch_option=sbatch_option, sbatch_value=sbatch_value, comment=comment
    )
    return environment


def render(config: Config, template: str, context: Mapping[str, Any]) -> str:
    """Render ``template`` for the configured machine; StrictUndefined, quoting enforced."""
    import jinja2

    environment = _environment(tuple(str(d) for d in _template_dirs(config)))
    cluster = config.settings.cluster
    common = {
        "machine": config.machine,
        "description": cluster.description,
        "modules": cluster.modules,
        "runtime": cluster.container_runtime,
        "runtime_binary": cluster.container_binary if uses_container(config) else "",
        "network": cluster.network,
    }
    try:
        return environment.get_template(template).render({**common, **context})
    except jinja2.TemplateNotFound:
        raise RenderError(f"{TEMPLATES_DIR}/{template}: no such template") from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{TEMPLATES_DIR}/{template}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{exc.filename or template}:{exc.lineno}: {exc.message}") from None


def _render_job(
    config: Config, template: str, *, title: str, task: str, resources: JobResources, run_dir: Path,
    training: bool, **context: Any,
) -> str:
    return render(
        config,
        template,
        {
            "title": title,
            "task": task,
            "resources": resources,
            "environment": job_environment(config, training=training),
            "workdir": str(run_dir),
            "launcher": job_launcher(config),
            **context,
        },
    )


def preprocess_script(
    config: Config, *, run_dir: Path, command: list[str], task: str = "data.preprocess", dependency: str = ""
) -> str:
    """One task on one node tokenizing with a worker process per CPU."""
    resources = resources_for(config, job_name="preprocess", gpu=False, log_dir=run_dir, nodes=1, dependency=dependency)
    return _render_job(
        config, "preprocess.sbatch.j2", title="Preprocess data", task=task, resources=resources,
        run_dir=run_dir, training=False, command=command,
    )


def preprocess_parallel_script(
    config: Config,
    *,
    run_dir: Path,
    command: list[str],
    ntasks_per_node: int = 1,
    task: str = "data.preprocess --parallel",
    dependency: str = "",
) -> str:
    """Tasks over all nodes each tokenizing a share of the input; the task that finishes last merges."""
    resources = resources_for(
        config, job_name="preprocess-parallel", gpu=False, log_dir=run_dir,
        ntasks_per_node=ntasks_per_node, dependency=dependency,
    )
    return _render_job(
        config, "preprocess_parallel.sbatch.j2", title="Preprocess data in parallel", task=task,
        resources=resources, run_dir=run_dir, training=False, command=command,
    )


def export_script(
    config: Config, *, run_dir: Path, command: list[str], task: str = "research.export", dependency: str = ""
) -> str:
    """One task on one node converting a checkpoint to a Hugging Face directory on its CPUs."""
    resources = resources_for(config, job_name="export", gpu=False, log_dir=run_dir, nodes=1, dependency=dependency)
    return _render_job(
        config, "export.sbatch.j2", title="Export a checkpoint to Hugging Face", task=task, resources=resources,
        run_dir=run_dir, training=False, command=command,
    )


def train_script(
    config: Config,
    *,
    run_dir: Path,
    command: list[str],
    torchrun: list[str] | None = None,
    task: str = "train.submit",
    dependency: str = "",
    nproc_per_node: int = 0,
    stoppable: bool = True,
) -> str:
    """One task per node running the machine's launcher with c10d rendezvous on the first node.

    With ``cluster.stop_signal_lead`` N > 0 the job asks for USR1 N seconds
    before its time limit and stops training with a checkpoint on it (and on
    a preemption's TERM); see titanenv.train.stop. ``stoppable`` False (a
    checkout's own entry point, which knows nothing of that signal) leaves
    all of that out.
    """
    cluster = config.settings.cluster
    resources = resources_for(config, job_name="train", gpu=True, log_dir=run_dir, dependency=dependency)
    if not cluster.network.master_port and uses_container(config):
        raise ConfigError(
            "port 0 (a free port chosen at job start) needs the host's Python, which only runtime none uses; "
            "give a fixed port",
            source=config.origin("cluster.network.master_port"), key="cluster.network.master_port",
        )
    lead = stop_lead(config) if stoppable else 0
    if lead:
        resources = dataclasses.replace(resources, options={**resources.options, "signal": f"B:USR1@{lead}"})
    return _render_job(
        config, "train.sbatch.j2", title="Train with TorchTitan", task=task, resources=resources,
        run_dir=run_dir, training=True, command=command, torchrun=torchrun or launch_torchrun(config),
        # One process per GPU; CPU-only machines run one per node unless told.
        nproc_per_node=nproc_per_node or cluster.gpus_per_node or 1,
        stop_lead=lead, stop_guard=stop_guard() if lead else [],
        port_python=job_python(config),
    )


def stop_lead(config: Config) -> int:
    """``cluster.stop_signal_lead``, checked against the job's time limit (a lead as long stops every job at once)."""
    lead = config.settings.cluster.stop_signal_lead
    limit = slurm_time_seconds(config.settings.slurm.time)
    if lead and limit is not None and lead >= limit:
        raise ConfigError(
            f"{lead} s before the time limit leaves no time to train within --time {config.settings.slurm.time}; "
            "give a longer --time or a shorter lead (INVOKE_CLUSTER_STOP_SIGNAL_LEAD)",
            source=config.origin("cluster.stop_signal_lead"), key="cluster.stop_signal_lead",
        )
    return lead
