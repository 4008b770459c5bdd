"""The one path by which every task submits to Slurm, and the job queries behind ``jobs.*``.

``submit(config, run, script)`` writes the rendered script to
``<run>/job.sbatch``, submits it with ``sbatch --parsable`` (as a chain of
jobs if asked, each ``afterok`` the one before), and writes the run record
beside it. Either all of that happens or none of it: a failure cancels what
was submitted, removes what the call created and raises a
:class:`~titanenv.slurm.cli.SlurmError` with Slurm's own message.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from titanenv.config import Config
from titanenv.git import GitProbe
from titanenv.runs import Run, write_record
from titanenv.slurm.script import directives
from titanenv.slurm.cli import (
    AccountingUnavailable,
    SlurmCommandError,
    SlurmError,
    SlurmNotFound,
    require,
    sbatch,
    scancel,
)

__all__ = [
    "AccountingUnavailable",
    "SCRIPT_NAME",
    "SlurmCommandError",
    "SlurmError",
    "SlurmNotFound",
    "SubmitError",
    "Submission",
    "normalize_dependency",
    "submit",
]

SCRIPT_NAME = "job.sbatch"
_DEPENDENCY_TYPES = ("after", "afterany", "afterburstbuffer", "aftercorr", "afternotok", "afterok")
_DEPENDENCY_ITEM = re.compile(
    rf"^(?:singleton|(?:{'|'.join(_DEPENDENCY_TYPES)}):\d+(?:_\d+)?(?:\+\d+)?(?::\d+(?:_\d+)?(?:\+\d+)?)*)$"
)


class SubmitError(SlurmError):
    """A submission was refused (by Slurm or before reaching it); nothing was left behind."""


@dataclass(frozen=True)
class Submission:
    """What :func:`submit` did: the job ids in submission order, the script and record written."""

    job_ids: list[str]
    script_path: Path | None  # None for dry runs
    record_path: Path | None

    @property
    def job_id(self) -> str | None:
        """The last job of the chain: the one to wait for."""
        return self.job_ids[-1] if self.job_ids else None


def normalize_dependency(dependency: str) -> str:
    """A ``--dependency`` value for sbatch; bare job ids (``123`` or ``123:124``) mean ``afterok``.

    Raises SubmitError naming the expected forms for anything else.
    """
    value = dependency.strip()
    if re.fullmatch(r"\d+(?::\d+)*", value):
        return f"afterok:{value}"
    items = re.split(r"[,?]", value)
    if value and all(_DEPENDENCY_ITEM.match(item) for item in items):
        return value
    raise SubmitError(
        f"--dependency {dependency!r}: give a job id (123), TYPE:ID[:ID...] with TYPE one of "
        f"{', '.join(_DEPENDENCY_TYPES)} (afterok:123), or singleton"
    )


def dependency_job_ids(dependency: str) -> list[str]:
    """The job ids a normalized dependency names (``afterok:12:13,afterany:14+1`` -> 12, 13, 14)."""
    ids = []
    for item in re.split(r"[,?]", dependency):
        ids += [part.split("+")[0] for part in item.split(":")[1:]]
    return list(dict.fromkeys(ids))


def _check_dependency_jobs(dependency: str, given: str) -> None:
    """Refuse a dependency on a job Slurm does not know: sbatch would drop it and start at once."""
    from titanenv.slurm.jobs import lookup

    ids = dependency_job_ids(dependency)
    if not ids:
        return
    unknown = [job.job_id for job in lookup(ids).jobs if job.source == "none"]
    if unknown:
        raise SubmitError(
            f"--dependency {given!r}: job {unknown[0]} is unknown to Slurm here (not queued, not running, and "
            "not in its accounting or completion log); nothing was submitted"
        )


def _sbatch_options(dependency: str | None) -> list[str]:
    if not dependency:
        return []
    # A dependency that can never be satisfied (its job failed) cancels this
    # job instead of leaving it pending forever: a failed link stops a chain.
    return [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]


def _create_dir(path: Path) -> Path:
    """Create ``path`` and missing parents; return the topmost directory this created."""
    top = path
    while not top.parent.exists():
        top = top.parent
    if path.exists():
        raise SubmitError(f"{path} already exists; refusing to reuse a run directory")
    path.mkdir(parents=True)
    return top


def submit(config: Config, run: Run, script: str, *, dry: bool = False, chain: int = 1,
           dependency: str | None = None, echo: Callable[[str], None] = print,
           extra: dict | None = None) -> Submission:
    """Write ``script`` into the run directory, submit it, and record the run.

    ``chain`` > 1 submits the same script ``chain`` times, each job
    ``afterok`` the previous one, so a long training resumes link by link
    from the last checkpoint and a failed link cancels the rest. The first
    job depends on ``dependency`` (a job id or an sbatch dependency
    expression) when given. ``dry`` echoes the script and the sbatch
    commands and creates nothing. ``extra`` goes into the run record.
    """
    if chain < 1:
        raise SubmitError(f"--chain {chain}: a chain has at least 1 job")
    first_dependency = normalize_dependency(dependency) if dependency else None
    script_path = run.path / SCRIPT_NAME

    if dry:
        echo(f"# {script_path} (dry run: nothing written or submitted)")
        echo(script.rstrip("\n"))
        for link in range(chain):
            # Dependency values are plain words (checked above); <job N> stands for an id to come.
            dep = first_dependency if link == 0 else f"afterok:<job {link}>"
            words = ["sbatch", "--parsable", *_sbatch_options(dep), shlex.quote(str(script_path))]
            echo(f"# would run: {' '.join(words)}" + (f"  -> <job {link + 1}>" if chain > 1 else ""))
        return Submission(job_ids=[], script_path=None, record_path=None)

    require("sbatch")
    if first_dependency:
        _check_dependency_jobs(first_dependency, dependency or "")
    created = _create_dir(run.path)
    submitted: list[str] = []
    # The repository's state for the record, found while sbatch runs.
    git = GitProbe(config.repo_root)
    try:
        # The run directory is new and ours alone: no reader can see a partial script.
        script_path.write_text(script, encoding="utf-8")
        for link in range(chain):
            dep = first_dependency if link == 0 else f"afterok:{submitted[-1]}"
            try:
                job_id = sbatch(script_path, options=_sbatch_options(dep), cwd=run.path)
            except SlurmCommandError as exc:
                raise SubmitError(
                    f"sbatch rejected the job: {exc.slurm_message}{_rejection_hint(config, script, exc.slurm_message)}"
                ) from None
            submitted.append(job_id)
        record_path = write_record(config, run, job_ids=submitted, script=SCRIPT_NAME, extra=extra, git=git)
    except BaseException as exc:
        git.result()  # reap it
        problems = _undo(submitted, created)
        undone = f"; cancelled job(s) {', '.join(submitted)}" if submitted and not problems else ""
        if problems:
            undone = f"; also: {problems}"
        if isinstance(exc, OSError):
            raise SubmitError(f"could not write the run's files: {exc}{undone}") from None
        if isinstance(exc, SlurmError) and undone:
            raise SubmitError(f"{exc}{undone}") from None
        raise
    for job_id in submitted:
        echo(f"submitted job {job_id}: {script_path}")
    echo(f"run record: {record_path}")
    return Submission(job_ids=submitted, script_path=script_path, record_path=record_path)


# Slurm's reasons for refusing a job, and the task flag that fixes each.
_REJECTION_HINTS = (
    ("node count specification invalid", "ask for fewer than {nodes} nodes (--nodes) or another partition kind (--partition)"),
    ("more processors requested than permitted", "ask for fewer than {nodes} nodes (--nodes) or another partition kind (--partition)"),
    ("time limit", "shorten --time {time} or choose a partition kind with a longer limit (--partition)"),
    ("invalid partition", "the machine profile names partition {partition!r}, which this cluster lacks"),
    ("invalid account", "give an account you belong to (--account)"),
    ("invalid qos", "the machine profile names QoS {qos!r}, which this cluster or account lacks"),
    ("gres", "the job asks for GPUs this partition does not have"),
)


def _rejection_hint(config: Config, script: str, message: str) -> str:
    """What to change, from the job's own #SBATCH lines and the configured partition kind."""
    asked = directives(script)
    values = {name: asked.get(name, "") for name in ("nodes", "time", "partition", "qos")}
    where = f"partition kind {config.settings.slurm.partition}"
    if values["partition"]:
        where += f" = {values['partition']}"
    lowered = message.lower()
    for needle, hint in _REJECTION_HINTS:
        if needle in lowered:
            return f" ({hint.format(**values)}; {where})"
    return f" ({where}, --nodes {values['nodes']}, --time {values['time']})"


def _undo(submitted: list[str], created: Path) -> str:
    """Cancel ``submitted`` and remove ``created``; say what could not be undone."""
    problems = []
    if submitted:
        try:
            scancel(submitted)
        except SlurmError as exc:
            problems.append(f"could not cancel jobs {', '.join(submitted)}: {exc}")
    shutil.rmtree(created, ignore_errors=True)
    if created.exists():
        problems.append(f"could not remove {created}")
    return "; ".join(problems)
