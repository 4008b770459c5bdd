"""One writer per experiment: its checkpoint folder ``{checkpoint_dir}/<name>``.

Two trainings writing one folder at once would interleave their
checkpoints (both save ``step-20``). So:

- ``train.run`` holds the folder's lock (``<folder>.lock``, see
  :mod:`titanenv.locks`) while it trains here, and refuses while a Slurm job
  of the experiment is queued or running;
- ``train.submit`` refuses while ``train.run`` holds that lock, or while a
  job of the experiment is queued or running, unless the new job is to
  follow it (``--dependency <its id>``). The links of one ``--chain`` follow
  each other by construction.

Jobs of an experiment are found in the ``train`` run records (their
``extra.train.dump_folder``) and their state asked of Slurm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from titanenv.config import Config
from titanenv.errors import TitanEnvError


class ExperimentBusy(TitanEnvError):
    """Another training writes the experiment's checkpoints."""


def hold(config: Config, dump_folder: Path, *, echo: Callable[[str], None] = print):
    """The experiment's lock for a training here (a context manager), after checking for its Slurm jobs."""
    from titanenv import locks

    _refuse_running_jobs(config, dump_folder, dependency=None, here=True)
    return locks.acquire(dump_folder, what="train.run", instead="use another --name", echo=echo)


def check_submission(config: Config, dump_folder: Path, dependency: str | None) -> None:
    """Refuse a job that would write ``dump_folder`` while another training does."""
    from titanenv import locks

    locks.check(dump_folder, instead="use another --name")
    _refuse_running_jobs(config, dump_folder, dependency=dependency, here=False)


def active_jobs(config: Config, dump_folder: Path) -> list[str]:
    """Ids of the queued or running Slurm jobs whose run record names ``dump_folder``, oldest first."""
    from titanenv.runs import list_runs

    ids: list[str] = []
    for record in list_runs(config, "train"):
        train = (record.data.get("extra") or {}).get("train") or {}
        if train.get("dump_folder") == str(dump_folder):
            ids.extend(record.job_ids)
    if not ids:
        return []
    from titanenv.slurm.jobs import job_id_order, lookup

    ids = sorted(set(ids), key=job_id_order)
    return [job.job_id for job in lookup(ids).jobs if job.source != "none" and not job.ended]


def _refuse_running_jobs(config: Config, dump_folder: Path, *, dependency: str | None, here: bool) -> None:
    from titanenv.slurm import SlurmError, dependency_job_ids, normalize_dependency

    try:
        running = active_jobs(config, dump_folder)
    except SlurmError:
        if here:  # no Slurm on this machine: no job of it can be running
            return
        raise
    if not running:
        return
    if dependency and running[-1] in dependency_job_ids(normalize_dependency(dependency)):
        return
    ids = ", ".join(running)
    if here:
        raise ExperimentBusy(
            f"{dump_folder} is being written by Slurm job(s) {ids} of this experiment; wait for them "
            f"(invoke jobs.wait --job {','.join(running)}), cancel them (invoke jobs.cancel --job "
            f"{','.join(running)}) or use another --name"
        )
    raise ExperimentBusy(
        f"{dump_folder} is being written by Slurm job(s) {ids} of this experiment (queued or running); "
        f"add --dependency {running[-1]} to start after them, cancel them (invoke jobs.cancel --job "
        f"{','.join(running)}) or use another --name"
    )

