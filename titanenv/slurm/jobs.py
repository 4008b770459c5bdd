"""Jobs as users see them: state, elapsed time, nodes, reason, logs; waiting and cancelling.

Where a job's state comes from, in order:

1. ``squeue --json --states=all``: pending, running and recently ended jobs
   (slurmctld keeps ended ones for ``MinJobAge``, 5 minutes by default);
2. ``sacct``: the accounting database, where the site runs slurmdbd;
3. ``sacct --completion``: the job-completion log, where one is configured;
4. the run record and the job's own files: the job was submitted, its
   outcome is unknown to Slurm here (the state is then ``UNKNOWN`` and a
   note says why instead of failing).
"""

from __future__ import annotations

import codecs
import os
import pwd
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TextIO

from titanenv.config import Config
from titanenv.slurm import cli
from titanenv.slurm.cli import AccountingUnavailable, SlurmError
from titanenv.slurm.script import directives, expand_pattern

# Ended states; only COMPLETED is a success.
ENDED = frozenset(
    {
        "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT",
    }
)
SUCCEEDED = "COMPLETED"
_JOB_ID = re.compile(r"^\d+(?:_\d+)?$")
NO_ACCOUNTING_NOTE = (
    "note: Slurm accounting (sacct) is not configured here; ended jobs are shown while slurmctld "
    "remembers them, then from the job-completion log or the run records"
)


class JobFailed(SlurmError):
    """A job ended in a state other than COMPLETED."""

    def __init__(self, job: "Job", message: str):
        self.job = job
        super().__init__(message)


@dataclass(frozen=True)
class Job:
    """One job's state as Slurm (or, failing that, its run record) reports it."""

    job_id: str
    name: str = ""
    state: str = "UNKNOWN"
    elapsed: int | None = None  # seconds
    nodes: int | None = None
    nodelist: str = ""
    reason: str = ""
    exit_code: int | None = None
    source: str = "squeue"
    stdout: str = ""
    stderr: str = ""
    workdir: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCEEDED

    @property
    def why(self) -> str:
        """The REASON column: why it waits, or how it ended."""
        if self.state == "PENDING":
            return "" if self.reason in ("None", "") else self.reason
        if self.ended and not self.succeeded:
            parts = []
            if self.exit_code:
                parts.append(f"exit code {self.exit_code}")
            if self.reason and self.reason not in ("None", "NonZeroExitCode"):
                parts.append(self.reason)
            return ", ".join(parts)
        return "" if self.reason in ("None", "") else self.reason


def elapsed_text(seconds: int | None) -> str:
    """Slurm's way: ``M:SS``, ``H:MM:SS``, ``D-HH:MM:SS``."""
    if seconds is None:
        return "-"
    days, rest = divmod(max(0, int(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def _seconds(text: str) -> int | None:
    """``[D-]HH:MM:SS`` or ``MM:SS`` (sacct's Elapsed) in seconds."""
    if not text or text in ("Unknown", "INVALID"):
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def from_squeue(entry: dict, now: float | None = None) -> Job:
    now = time.time() if now is None else now
    state = cli.state_name(entry.get("job_state"))
    start = cli.number(entry.get("start_time")) or 0
    end = cli.number(entry.get("end_time")) or 0
    if state == "PENDING" or not start or start > now:
        elapsed = 0
    elif state in ENDED and end >= start:
        elapsed = end - start
    else:
        elapsed = int(now) - start
    return Job(
        job_id=str(entry.get("job_id")),
        name=str(entry.get("name", "")),
        state=state,
        elapsed=elapsed,
        nodes=cli.number(entry.get("node_count")),
        nodelist=str(entry.get("nodes") or ""),
        reason=str(entry.get("state_reason") or ""),
        exit_code=cli.exit_status(entry.get("exit_code")),
        source="squeue",
        stdout=str(entry.get("standard_output") or ""),
        stderr=str(entry.get("standard_error") or ""),
        workdir=str(entry.get("current_working_directory") or ""),
    )


def from_sacct(row: dict[str, str], source: str) -> Job:
    exit_text = row.get("ExitCode", "")
    # sacct writes "CANCELLED by 0"; keep the state word.
    state = row.get("State", "UNKNOWN").split(" ")[0] or "UNKNOWN"
    nodes = row.get("NNodes", "")
    return Job(
        job_id=row["JobID"],
        name=row.get("JobName", ""),
        state=state,
        elapsed=_seconds(row.get("Elapsed", "")),
        nodes=int(nodes) if nodes.isdigit() else None,
        nodelist=row.get("NodeList", ""),
        exit_code=int(exit_text.split(":")[0]) if exit_text.split(":")[0].isdigit() else None,
        source=source,
        workdir=row.get("WorkDir", ""),
    )


@dataclass
class Lookup:
    """Jobs found, in the order asked, and notes on where the answers came from."""

    jobs: list[Job] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def lookup(job_ids: Sequence[str]) -> Lookup:
    """The state of each job, from the best source that still knows it (see the module docstring)."""
    found = {job.job_id: job for job in map(from_squeue, cli.squeue_json(job_ids=job_ids))}
    result = Lookup()
    missing = [jid for jid in job_ids if jid not in found]
    if missing:
        found.update(_from_accounting(missing, result.notes))
    for jid in job_ids:
        result.jobs.append(found.get(jid) or Job(job_id=jid, source="none", reason="unknown to Slurm here"))
    return result


def _from_accounting(job_ids: Sequence[str], notes: list[str], *, user: str | None = None,
                     since: str | None = None) -> dict[str, Job]:
    try:
        rows = cli.sacct(job_ids, user=user, since=since)
        return {row["JobID"]: from_sacct(row, "sacct") for row in rows}
    except AccountingUnavailable:
        pass
    if NO_ACCOUNTING_NOTE not in notes:
        notes.append(NO_ACCOUNTING_NOTE)
    try:
        rows = cli.sacct(job_ids, user=user, since=since, completion=True)
    except SlurmError:
        return {}
    return {row["JobID"]: from_sacct(row, "jobcomp") for row in rows}


def recent(*, since: str = "now-1days") -> Lookup:
    """The user's jobs: everything slurmctld knows, plus ended ones from accounting since ``since``."""
    queued = [from_squeue(entry) for entry in cli.squeue_json(me=True)]
    result = Lookup()
    ended = _from_accounting([], result.notes, user=_login(), since=since)
    known = {job.job_id for job in queued}
    jobs = queued + [job for jid, job in ended.items() if jid not in known]
    result.jobs = sorted(jobs, key=lambda j: job_id_order(j.job_id))
    return result


def _login() -> str:
    """The user Slurm knows this process as."""
    return pwd.getpwuid(os.getuid()).pw_name


def job_id_order(job_id: str) -> tuple[int, str]:
    head = job_id.split("_")[0].split("+")[0]
    return (int(head) if head.isdigit() else 0, job_id)


def table(jobs: Iterable[Job]) -> str:
    """A readable table: JOBID NAME STATE ELAPSED NODES REASON."""
    header = ("JOBID", "NAME", "STATE", "ELAPSED", "NODES", "REASON")
    rows = [
        (j.job_id, j.name or "-", j.state, elapsed_text(j.elapsed), "-" if j.nodes is None else str(j.nodes),
         j.why or "-")
        for j in jobs
    ]
    return format_rows(header, rows)


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


# --- logs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogPaths:
    stdout: Path | None
    stderr: Path | None
    source: str  # "scontrol" or "run record"


def log_paths(job_id: str, *, record_script: Path | None = None) -> LogPaths:
    """Where the job writes: from slurmctld, else from the #SBATCH lines of its recorded script."""
    fields = cli.scontrol_job(job_id)
    if fields:
        out, err = fields.get("StdOut", ""), fields.get("StdErr", "")
        return LogPaths(Path(out) if out else None, Path(err) if err else None, "scontrol")
    if record_script is not None and record_script.is_file():
        asked = directives(record_script.read_text(encoding="utf-8"))
        name = asked.get("job-name", "")
        user = _login()
        workdir = record_script.parent

        def resolve(pattern: str | None) -> Path | None:
            if not pattern:
                return None
            path = Path(expand_pattern(pattern, job_id=job_id, job_name=name, user=user))
            return path if path.is_absolute() else workdir / path

        default = f"slurm-{job_id}.out"
        out = resolve(asked.get("output") or default)
        err = resolve(asked.get("error")) or out
        return LogPaths(out, err, "run record")
    raise SlurmError(
        f"job {job_id} is unknown to slurmctld and no run record lists it; its log is where its script's --output says"
    )


def follow(path: Path | None, *, job_id: str, out: TextIO = sys.stdout, interval: float = 1.0,
           state: Callable[[str], Job] | None = None) -> Job:
    """Print ``path`` as it grows until the job ends (like ``tail -f`` that stops); return the final job."""
    if path is None:
        raise SlurmError(f"job {job_id} has no such log file")
    state = state or (lambda jid: lookup([jid]).jobs[0])
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    position = 0
    while True:
        job = state(job_id)
        position = _copy_new(path, position, out, decoder)
        if job.ended or job.source == "none":
            # The last lines may land just after the state changed.
            time.sleep(min(interval, 0.2))
            _copy_new(path, position, out, decoder)
            out.write(decoder.decode(b"", final=True))
            return job
        time.sleep(interval)


def _copy_new(path: Path, position: int, out: TextIO, decoder: codecs.IncrementalDecoder) -> int:
    """Write what was appended to ``path`` since ``position``; a character split between reads waits."""
    try:
        with path.open("rb") as f:
            f.seek(position)
            data = f.read()
    except FileNotFoundError:
        return position
    if data:
        out.write(decoder.decode(data))
        out.flush()
    return position + len(data)


# --- wait / cancel ------------------------------------------------------------------------


def wait(job_ids: Sequence[str], *, timeout: float | None = None, interval: float = 0.5,
         max_interval: float = 10.0, echo: Callable[[str], None] = print) -> list[Job]:
    """Block until every job has ended; print each state change; raise JobFailed if one did not complete.

    Polls all jobs in one ``squeue`` call, starting every ``interval`` seconds
    and backing off to ``max_interval``. A job Slurm no longer knows at all
    (no accounting, aged out) is reported, not guessed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, str] = {}
    delay = interval
    while True:
        found = lookup(job_ids)
        for job in found.jobs:
            label = job.state + (f" ({job.why})" if job.why else "")
            if seen.get(job.job_id) != label:
                seen[job.job_id] = label
                echo(f"job {job.job_id} ({job.name or '?'}): {label}")
        unknown = [job for job in found.jobs if job.source == "none"]
        if unknown:
            raise SlurmError(
                f"job {unknown[0].job_id} is unknown to Slurm here (never submitted, or ended and forgotten "
                "with no accounting configured)"
            )
        if all(job.ended for job in found.jobs):
            failed = [job for job in found.jobs if not job.succeeded]
            if failed:
                raise JobFailed(failed[0], _failure_message(failed[0], len(failed)))
            return found.jobs
        if deadline is not None and time.monotonic() > deadline:
            waiting = [job.job_id for job in found.jobs if not job.ended]
            raise SlurmError(f"timed out after {timeout:.0f} s waiting for job(s) {', '.join(waiting)}")
        time.sleep(delay)
        delay = min(delay * 1.5, max_interval)


def _failure_message(job: Job, count: int) -> str:
    message = f"job {job.job_id} ({job.name or '?'}) {job.state}"
    if job.why:
        message += f" ({job.why})"
    try:
        paths = log_paths(job.job_id)
    except SlurmError:
        paths = None
    if paths and paths.stderr and not paths.stderr.parent.is_dir():
        message += f" (its run directory {paths.stderr.parent} no longer exists)"
    elif paths and paths.stderr:
        last = last_error_line(paths.stderr)
        if last:
            message += f": {last}"
        message += f" (see {paths.stderr})"
    if count > 1:
        message += f"; {count - 1} more job(s) did not complete"
    return message


# srun's own summary of a failed step; the line before it says more.
_SRUN_SUMMARY = re.compile(r"^srun: (error: \S+: tasks? [\d,-]+: Exited with exit code \d+|launch/|Job step aborted)")


def last_error_line(path: Path) -> str:
    """The job's last line on stderr that is not srun's own summary of the failure."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            lines = [line.strip() for line in f.read().decode("utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    telling = [line for line in lines if not _SRUN_SUMMARY.match(line)]
    chosen = (telling or lines or [""])[-1]
    return chosen[:200]


def cancel(job_ids: Sequence[str], *, settle: float = 10.0) -> list[Job]:
    """Cancel jobs; return their states once they have ended (CANCELLED, or how they had ended before).

    Running jobs pass through COMPLETING while their processes are killed;
    this waits up to ``settle`` seconds for that, then reports what it sees.
    """
    unknown = [job.job_id for job in lookup(job_ids).jobs if job.source == "none"]
    if unknown:
        raise SlurmError(f"job {unknown[0]} is unknown to Slurm here; nothing was cancelled")
    cli.scancel(job_ids)
    deadline = time.monotonic() + settle
    while True:
        jobs = lookup(job_ids).jobs
        if all(job.ended or job.source == "none" for job in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


def parse_job_ids(text: str) -> list[str]:
    """``123``, ``123,124`` or ``123 124`` as a list; anything else is a one-line error."""
    ids = [part for part in re.split(r"[,\s]+", str(text).strip()) if part]
    # Slurm numbers jobs from 1; to scontrol, job 0 means every job.
    bad = [part for part in ids if not _JOB_ID.match(part) or int(part.split("_")[0]) == 0]
    if bad or not ids:
        raise SlurmError(f"job id {(bad or [text])[0]!r}: expected a number such as 123 (or 123_4 for an array task)")
    return ids


def read_log(path: Path | None, *, job_id: str, tail: int = 0) -> str:
    """The whole log file, or its last ``tail`` lines; a clear error if it is not there (yet)."""
    if path is None:
        raise SlurmError(f"job {job_id} has no such log file")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        job = lookup([job_id]).jobs[0]
        if not path.parent.is_dir():
            raise SlurmError(f"job {job_id} ({job.state}) wrote its log into {path.parent}, which no longer exists") from None
        if job.ended:
            raise SlurmError(f"job {job_id} ({job.state}) left no {path}") from None
        raise SlurmError(f"job {job_id} ({job.state}) has not written {path} (yet); try --follow") from None
    if tail > 0:
        text = "".join(text.splitlines(keepends=True)[-tail:])
    return text


def runs_table(config: Config, *, limit: int = 20) -> str:
    """Runs from their records, newest first: run, submitted, machine, git, jobs, states."""
    from titanenv.runs import BrokenRecord, scan_runs

    entries = scan_runs(config)[:limit]
    if not entries:
        return f"no runs under {config.paths.runs_dir}"
    records = [entry for entry in entries if not isinstance(entry, BrokenRecord)]
    ids = [jid for record in records for jid in record.job_ids]
    states: dict[str, str] = {}
    notes: list[str] = []
    if ids:
        try:
            found = lookup(ids)
            states = {job.job_id: job.state for job in found.jobs}
            notes = found.notes
        except SlurmError as exc:
            notes = [f"note: job states unavailable: {exc}"]
    rows = []
    for record in entries:
        relative = record.run_dir.relative_to(config.paths.runs_dir) if record.run_dir.is_relative_to(
            config.paths.runs_dir) else record.run_dir
        if isinstance(record, BrokenRecord):
            rows.append((str(relative), "-", "?", "-", "?", f"UNREADABLE {record.path.name}"))
            notes.append(f"warning: {record.problem}")
            continue
        # A chain's links in submission order, each with its state, like the JOBS column.
        link_states = [states.get(jid, "?") for jid in record.job_ids]
        summary = ",".join(link_states) if link_states else "(not a Slurm run)"
        submitted = record.submitted.split(".")[0].removesuffix("+00:00") + "Z" if record.submitted else "-"
        rows.append((str(relative), submitted, str(record.data.get("machine", "?")),
                     record.git_label, ",".join(record.job_ids) or "-", summary))
    text = format_rows(("RUN", "SUBMITTED", "MACHINE", "GIT", "JOBS", "STATE"), rows)
    return "\n".join([text, *notes])
