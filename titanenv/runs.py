"""Run records: a small manifest beside every submitted (or locally run) job.

A run is a directory ``<runs_dir>/<name>/<YYYYmmdd-HHMMSS>-<6 hex>`` (UTC
time stamp, so names sort in submission order). It holds the rendered
``job.sbatch``, the job's logs, and ``run.json``:

- ``config``: the resolved configuration (``titanenv.config.report.as_data``);
- ``machine`` and ``profiles`` (the profile chain, base first), ``files_read``;
- ``script``: the rendered script's file name and sha256;
- ``git``: this repository's commit and whether the tree was dirty;
- ``job_ids``: every Slurm job submitted for the run (a chain has several);
- ``submitted``: UTC time in ISO 8601 (milliseconds), plus ``user`` and ``host``;
- ``extra``: whatever the submitting task adds (its command, data paths, ...).

``run.json`` is written to a temporary name and renamed, so a reader never
sees half a record, and it is written only after Slurm accepted every job:
a record never claims a job id that was not submitted.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from titanenv.config import Config
from titanenv.errors import TitanEnvError
from titanenv.files import sha256_file, write_json_atomic
from titanenv.git import GitProbe

RECORD_NAME = "run.json"
RECORD_FORMAT = 1
# What each job ran with, written by the job itself at its start: ran-<job id>.json.
RAN_PREFIX = "ran"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STAMP_FORMAT = "%Y%m%d-%H%M%S"


class RunError(TitanEnvError):
    """A run name or record is wrong or missing."""


@dataclass(frozen=True)
class Run:
    """Where one run's script, logs and record go; see :func:`new_run`."""

    name: str
    path: Path


def new_run(config: Config, name: str) -> Run:
    """A fresh run directory under ``runs_dir/name``; computes the path, creates nothing."""
    if not _RUN_NAME.match(name):
        raise RunError(f"run name {name!r}: use letters, digits, '.', '_' and '-' (e.g. train)")
    stamp = datetime.now(timezone.utc).strftime(_STAMP_FORMAT)
    return Run(name=name, path=config.paths.runs_dir / name / f"{stamp}-{secrets.token_hex(3)}")


def _script_entry(run: Run, script: str | None) -> dict[str, str] | None:
    """``{"file", "sha256"}`` of the rendered script.

    ``script`` is normally the script's file name inside the run directory;
    the script's text (anything with a newline) is accepted too and hashed as
    it is, named after the run's ``job.sbatch`` if that file holds it.
    """
    if script is None:
        return None
    if "\n" in script:
        digest = hashlib.sha256(script.encode()).hexdigest()
        default = run.path / "job.sbatch"
        name = default.name if default.is_file() and sha256_file(default) == digest else None
        return {"file": name, "sha256": digest}
    path = run.path / script
    if not path.is_file():
        raise RunError(f"{path}: no such script to record")
    return {"file": script, "sha256": sha256_file(path)}


def write_record(config: Config, run: Run, *, job_ids: list[str], script: str | None = None,
                 extra: dict | None = None, git: GitProbe | None = None) -> Path:
    """Write ``run.json`` in the run directory (created if needed), atomically; return its path.

    ``git`` is a probe started earlier (so it ran alongside other work); by
    default the repository is probed now.
    """
    from titanenv.config.report import as_data

    run.path.mkdir(parents=True, exist_ok=True)
    record = {
        "format": RECORD_FORMAT,
        "name": run.name,
        "run_dir": str(run.path),
        "submitted": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "job_ids": [str(job_id) for job_id in job_ids],
        "machine": config.machine,
        "profiles": list(config.machine_chain),
        "files_read": list(config.files_read),
        "script": _script_entry(run, script),
        "git": (git or GitProbe(config.repo_root)).result(),
        "user": config.user,
        "host": socket.gethostname(),
        "container": _container_entry(config),
        "extra": dict(extra or {}),
        "config": as_data(config),
    }
    path = run.path / RECORD_NAME
    write_json_atomic(path, record)
    return path


def ran_path(run_dir: Path, job_id: str | None) -> Path:
    """Where a job writes what it ran with (``titanenv.train.provenance``): one file per job."""
    return run_dir / (f"{RAN_PREFIX}-{job_id}.json" if job_id else f"{RAN_PREFIX}.json")


def read_ran(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The ``ran*.json`` files of a run directory by job id (``""`` for train.run); unreadable ones say why."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob(f"{RAN_PREFIX}*.json")):
        key = path.stem.removeprefix(RAN_PREFIX).removeprefix("-")
        try:
            found[key] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            found[key] = {"error": f"{path}: {exc}"}
    return found


def _container_entry(config: Config) -> dict[str, Any]:
    """The active container at submission, with the digest its build recorded.

    Each job also records the image it really ran in (``ran-<job>.json``):
    a container activated between submission and start shows there.
    """
    from titanenv import container

    runtime = config.settings.cluster.container_runtime
    if not container.uses_container(config):
        return {"runtime": runtime}
    try:
        state = container.images(config, echo=lambda _: None).slot_state("active")
    except (TitanEnvError, OSError) as exc:
        return {"runtime": runtime, "error": str(exc)}
    return {"runtime": runtime, "image": state.location, "present": state.present, "digest": state.digest or None}


# --- reading records --------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """A ``run.json`` read back."""

    path: Path
    data: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return str(self.data.get("name", self.run_dir.parent.name))

    @property
    def job_ids(self) -> list[str]:
        return [str(j) for j in self.data.get("job_ids", [])]

    @property
    def submitted(self) -> str:
        return str(self.data.get("submitted", ""))

    @property
    def script_path(self) -> Path | None:
        script = self.data.get("script") or {}
        return self.run_dir / script["file"] if script.get("file") else None

    @property
    def ran(self) -> dict[str, dict[str, Any]]:
        """What each job ran with (``ran-<job>.json``, by job id), as the jobs recorded it at their start."""
        return read_ran(self.run_dir)

    @property
    def git_label(self) -> str:
        git = self.data.get("git") or {}
        commit = git.get("commit")
        if not commit:
            return "-"
        return commit[:10] + ("+dirty" if git.get("dirty") else "")


def read_record(path: Path) -> RunRecord:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: cannot read the run record: {exc}") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: not a run record")
    return RunRecord(path, data)


def _record_paths(runs_dir: Path, name: str | None) -> Iterator[Path]:
    pattern = f"{name}/*/{RECORD_NAME}" if name else f"*/*/{RECORD_NAME}"
    return runs_dir.glob(pattern)


@dataclass(frozen=True)
class BrokenRecord:
    """A ``run.json`` that cannot be read (truncated, not JSON, unreadable): listed, never skipped."""

    path: Path
    problem: str

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def scan_runs(config: Config, name: str | None = None) -> list[RunRecord | BrokenRecord]:
    """Every run record under ``runs_dir`` (of task ``name``), newest first, unreadable ones included.

    Run directories are named ``<UTC time>-<hex>`` when created, so their
    names order readable and unreadable records alike (:func:`_age_key`).
    """
    entries: list[RunRecord | BrokenRecord] = []
    for path in _record_paths(config.paths.runs_dir, name):
        try:
            entries.append(read_record(path))
        except RunError as exc:
            entries.append(BrokenRecord(path, str(exc)))
    entries.sort(key=_age_key, reverse=True)
    return entries


_RUN_DIR_NAME = re.compile(r"^\d{8}-\d{6}-[0-9a-f]+$")


def _age_key(entry: RunRecord | BrokenRecord) -> tuple[str, str, str]:
    """Creation order: the UTC second in the directory's name (else, renamed by hand, its mtime),
    then the recorded submission time; within one second an unreadable record counts as the newer."""
    name = entry.run_dir.name
    if _RUN_DIR_NAME.match(name):
        second = name.rsplit("-", 1)[0]
    else:
        try:
            mtime = entry.run_dir.stat().st_mtime
        except OSError:
            mtime = 0.0
        second = datetime.fromtimestamp(mtime, timezone.utc).strftime(_STAMP_FORMAT)
    submitted = "~" if isinstance(entry, BrokenRecord) else entry.submitted
    return second, submitted, str(entry.run_dir)


def list_runs(config: Config, name: str | None = None, *, limit: int | None = None) -> list[RunRecord]:
    """Readable run records under ``runs_dir``, newest first (:func:`scan_runs` also gives unreadable ones)."""
    records = [entry for entry in scan_runs(config, name) if isinstance(entry, RunRecord)]
    return records[:limit] if limit else records


def _refuse_broken(entry: BrokenRecord, wanted: str) -> RunError:
    return RunError(
        f"{entry.path}: the newest run record {wanted} cannot be read ({entry.problem.split(': ', 1)[-1]}); "
        "refusing to act on an older run: repair or remove that run directory, or name a run directory or job"
    )


def find_run(config: Config, ref: str) -> RunRecord:
    """A run by directory (absolute or under ``runs_dir``), by name (its latest run), or ``latest``.

    When the latest record of that name cannot be read, this refuses rather
    than fall back to an older run.
    """
    runs_dir = config.paths.runs_dir
    candidate = Path(ref).expanduser()
    for directory in (candidate, runs_dir / ref):
        if (directory / RECORD_NAME).is_file():
            return read_record(directory / RECORD_NAME)
        if directory.name == RECORD_NAME and directory.is_file():
            return read_record(directory)
    if ref == "latest" or _RUN_NAME.match(ref):
        entries = scan_runs(config, None if ref == "latest" else ref)
        if entries:
            if isinstance(entries[0], BrokenRecord):
                raise _refuse_broken(entries[0], f"({ref})")
            return entries[0]
    raise RunError(f"no run {ref!r} under {runs_dir} (give a run directory, a run name such as train, or latest)")


def latest_submitting_run(config: Config) -> RunRecord:
    """The newest run that submitted Slurm jobs (runs done in place submit none).

    An unreadable record newer than that run may have been the one meant: refused.
    """
    for entry in scan_runs(config):
        if isinstance(entry, BrokenRecord):
            raise _refuse_broken(entry, "(it may be the newest run that submitted jobs)")
        if entry.job_ids:
            return entry
    raise RunError(f"no run under {config.paths.runs_dir} submitted Slurm jobs; give --job ID or --run RUN")


def find_job(config: Config, job_id: str) -> RunRecord | None:
    """The run whose record lists ``job_id``, newest first; None if none does."""
    for record in list_runs(config):
        if job_id in record.job_ids:
            return record
    return None
