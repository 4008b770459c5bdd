"""Slurm's command-line tools as typed functions: argv lists in, parsed data out.

Every call is one ``subprocess.run`` of ``sbatch``, ``squeue``, ``scontrol``,
``sacct`` or ``scancel`` in a parseable mode (``--parsable``, ``--json``,
``-o``). A missing binary raises :class:`SlurmNotFound`, a failing one
:class:`SlurmCommandError` carrying Slurm's own message on one line.

Output shapes differ between Slurm releases (22.05 on Debian bookworm and
the test suite, 23.x and later at the sites); the JSON readers accept both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

from titanenv.errors import CommandError, TitanEnvError

# Where a missing command most often comes from.
_NOT_FOUND_HINT = "run this on a login node of a Slurm cluster (or load its Slurm module)"
_SCONTROL_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_/:]*$")


class SlurmError(TitanEnvError):
    """Something about Slurm went wrong; the message says what and what to do."""


class SlurmNotFound(SlurmError):
    """A Slurm command is not on PATH."""

    def __init__(self, command: str):
        self.command = command
        super().__init__(f"{command} not found on PATH: {_NOT_FOUND_HINT}")


class SlurmCommandError(CommandError, SlurmError):
    """A Slurm command exited non-zero; ``str()`` is its own message, on one line."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, hint: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.slurm_message = slurm_message(stderr) or f"exit status {returncode}"
        if hint and len(self.slurm_message) > 120:
            # A chain of low-level complaints; its last line says what failed.
            self.slurm_message = self.slurm_message.rsplit("; ", 1)[-1]
        message = f"{Path(argv[0]).name} failed: {self.slurm_message}"
        if hint:
            message += f" ({hint})"
        SlurmError.__init__(self, message)


def slurm_message(stderr: str) -> str:
    """Slurm's error lines joined into one, without repeated ``sbatch: error:`` prefixes.

    ``sbatch: error: invalid partition specified: nope`` and
    ``sbatch: error: Batch job submission failed: Invalid partition name specified``
    become ``invalid partition specified: nope; Batch job submission failed: ...``.
    """
    parts = []
    for line in stderr.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        line = re.sub(r"^(s[a-z]+|scontrol|sacct): (error|fatal|warning): ", "", line)
        if line not in parts:
            parts.append(line)
    return "; ".join(parts)


def run(argv: Sequence[str], *, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command; raise SlurmNotFound / SlurmCommandError instead of tracebacks.

    No timeout of our own: Slurm's clients give up by themselves when
    slurmctld does not answer (MessageTimeout), with a message saying so.
    """
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmNotFound(argv[0]) from None
    if check and result.returncode != 0:
        raise SlurmCommandError(argv, result.returncode, result.stderr, hint=_hint(result.stderr))
    return result


# Failures that are about this host, not the request, and what to do about each.
_HOST_PROBLEMS = (
    ("could not establish a configuration source",
     "this host has Slurm's commands but no cluster configuration: run on a login node, or set SLURM_CONF"),
    ("unable to contact slurm controller", "slurmctld does not answer: check the cluster's status page, retry later"),
    ("munge encode failed", "authentication with munge failed: is munged running on this host?"),
)


def _hint(stderr: str) -> str:
    lowered = stderr.lower()
    for needle, hint in _HOST_PROBLEMS:
        if needle in lowered:
            return hint
    return ""


def require(command: str) -> str:
    """The path of ``command``, or SlurmNotFound before anything is done."""
    path = shutil.which(command)
    if path is None:
        raise SlurmNotFound(command)
    return path


# --- sbatch / scancel --------------------------------------------------------------


def sbatch(script: Path, *, options: Iterable[str] = (), cwd: Path | None = None) -> str:
    """Submit ``script`` with ``sbatch --parsable``; return the job id."""
    argv = ["sbatch", "--parsable", *options, str(script)]
    result = run(argv, cwd=cwd)
    # --parsable prints "jobid" or "jobid;cluster"; warnings may come before it.
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    job_id = lines[-1].split(";")[0].strip() if lines else ""
    if not job_id.isdigit():
        raise SlurmCommandError(argv, 0, f"no job id in sbatch's output {result.stdout.strip()!r}")
    return job_id


def scancel(job_ids: Sequence[str]) -> None:
    """Cancel jobs; ids that already ended are no error."""
    if not job_ids:
        return
    result = run(["scancel", *job_ids], check=False)
    if result.returncode != 0 and "Job has already finished" not in result.stderr:
        raise SlurmCommandError(["scancel", *job_ids], result.returncode, result.stderr)


# --- squeue --json -------------------------------------------------------------------


def number(value: Any) -> int | None:
    """An integer field: a plain number (22.05) or ``{"set", "infinite", "number"}`` (23.02+)."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def state_name(value: Any) -> str:
    """``job_state``: a string (22.05) or a list such as ``["RUNNING", "COMPLETING"]`` (23.02+)."""
    if isinstance(value, list):
        return str(value[0]) if value else "UNKNOWN"
    return str(value or "UNKNOWN")


def exit_status(value: Any) -> int | None:
    """The return code of ``exit_code``: a wait status (22.05) or an object (23.02+)."""
    if isinstance(value, dict):
        return number(value.get("return_code"))
    status = number(value)
    if status is None:
        return None
    # 22.05 reports the raw wait status: return code in the high byte.
    return status >> 8 if status > 255 else status


def squeue_json(*, job_ids: Sequence[str] = (), me: bool = False) -> list[dict[str, Any]]:
    """Jobs slurmctld still knows, finished ones included (``--states=all``).

    Ids it no longer knows are left out instead of failing the call.
    """
    argv = ["squeue", "--json", "--states=all"]
    if job_ids:
        argv.append("--jobs=" + ",".join(job_ids))
    if me:
        argv.append("--me")
    result = run(argv, check=False)
    if result.returncode != 0:
        if job_ids and "Invalid job id" in result.stderr:
            # One forgotten id fails the whole call; ask for the others one by one.
            if len(job_ids) == 1:
                return []
            return [job for jid in job_ids for job in squeue_json(job_ids=[jid])]
        raise SlurmCommandError(argv, result.returncode, result.stderr, hint=_hint(result.stderr))
    import json

    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise SlurmError(f"squeue --json printed something that is not JSON: {result.stdout[:80]!r}") from None
    return list(data.get("jobs", []))


# --- scontrol -----------------------------------------------------------------------


def parse_scontrol(line: str) -> dict[str, str]:
    """``Key=Value Key=Value`` of ``scontrol show ... -o``; a word without ``=`` continues the last value."""
    fields: dict[str, str] = {}
    key = None
    for word in line.strip().split(" "):
        name, sep, value = word.partition("=")
        if sep and _SCONTROL_KEY.match(name):
            key = name
            fields[key] = value
        elif key is not None:
            fields[key] += " " + word
    return fields


def scontrol_job(job_id: str) -> dict[str, str] | None:
    """``scontrol show job -o`` of one job; None when slurmctld no longer knows it."""
    result = run(["scontrol", "show", "job", "-o", job_id], check=False)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise SlurmCommandError(["scontrol", "show", "job", job_id], result.returncode, result.stderr,
                                hint=_hint(result.stderr))
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    # A job array prints one line per task; the first is the job itself.
    fields = parse_scontrol(lines[0]) if lines else None
    if fields is not None and fields.get("JobId") != job_id.split("_")[0]:
        return None  # another job's answer (scontrol reads 0 as "all jobs")
    return fields


# --- sacct ----------------------------------------------------------------------------

SACCT_FIELDS = ("JobID", "JobName", "State", "Elapsed", "NNodes", "NodeList", "ExitCode", "Start", "End", "WorkDir")


_SACCT_SEPARATOR = "\x1f"


class AccountingUnavailable(SlurmError):
    """``sacct`` cannot answer: Slurm's accounting (slurmdbd) is not configured here."""


def sacct(job_ids: Sequence[str] = (), *, user: str | None = None, since: str | None = None,
          completion: bool = False) -> list[dict[str, str]]:
    """Finished (and running) jobs from accounting, one row per job (no steps).

    ``completion`` reads the job-completion log (``sacct -c``) instead, which
    works without slurmdbd where ``JobCompType=jobcomp/filetxt`` is set.
    """
    # A separator no job name or directory holds (control characters are refused in
    # names we submit); sacct's default "|" is a printable character Slurm accepts.
    argv = ["sacct", "--parsable2", f"--delimiter={_SACCT_SEPARATOR}", "--noheader", "--allocations",
            "--format=" + ",".join(SACCT_FIELDS)]
    if completion:
        argv.insert(1, "--completion")
    if job_ids:
        argv.append("--jobs=" + ",".join(job_ids))
    if user:
        argv.append("--user=" + user)
    if since:
        argv.append("--starttime=" + since)
    result = run(argv, check=False)
    if result.returncode != 0:
        text = result.stderr.lower()
        if "accounting storage is disabled" in text or "slurmdbd" in text or "jobcomp" in text:
            raise AccountingUnavailable(slurm_message(result.stderr))
        raise SlurmCommandError(argv, result.returncode, result.stderr, hint=_hint(result.stderr))
    rows = []
    for line in result.stdout.splitlines():
        values = line.split(_SACCT_SEPARATOR)
        if len(values) != len(SACCT_FIELDS):
            continue
        rows.append(dict(zip(SACCT_FIELDS, values)))
    return rows
