"""Slurm jobs: status, logs, cancel, and wait (exits non-zero on failure, for CI chains)."""

from invoke import Collection, Exit

from tasks._common import MACHINE_HELP, load, task

JOB_HELP = "Job id(s), comma-separated (123 or 123,124)."
RUN_HELP = "A run instead of job ids: its directory, its name (its latest run, e.g. train) or `latest`."


def _job_ids(c, job, run, machine, *, what, latest=False):
    """Job ids from --job, every job of the run named by --run, or (``latest``) of the newest submitting run."""
    from titanenv.slurm.jobs import parse_job_ids

    if job and run:
        raise Exit("error: give --job or --run, not both", code=2)
    if job:
        return parse_job_ids(job), None
    if run:
        from titanenv.runs import find_run

        record = find_run(load({"machine": machine}), run)
        if not record.job_ids:
            raise Exit(f"error: run {record.run_dir} submitted no Slurm jobs", code=1)
        return record.job_ids, record
    if latest:
        from titanenv.runs import latest_submitting_run

        record = latest_submitting_run(load({"machine": machine}))
        print(f"waiting for run {record.run_dir}: job {','.join(record.job_ids)}", flush=True)
        return record.job_ids, record
    raise Exit(f"error: which job? {what} needs --job ID or --run RUN", code=2)


@task(
    help={
        "job": JOB_HELP + " Default: your jobs that Slurm remembers.",
        "run": RUN_HELP,
        "runs": "List runs from their records instead, newest first, with their jobs' states.",
        "limit": "At most this many runs with --runs.",
        "since": "With accounting: also show your jobs that ended since then (sacct --starttime).",
        "machine": MACHINE_HELP,
    }
)
def status(c, job="", run="", runs=False, limit=20, since="now-1days", machine=None):
    """Show jobs (id, name, state, elapsed, nodes, reason), or runs with --runs."""
    from titanenv.slurm import jobs

    if runs:
        print(jobs.runs_table(load({"machine": machine}), limit=int(limit)))
        return
    if job or run:
        ids, _ = _job_ids(c, job, run, machine, what="status")
        found = jobs.lookup(ids)
    else:
        found = jobs.recent(since=since)
    print(jobs.table(found.jobs) if found.jobs else "no jobs")
    for note in found.notes:
        print(note)


@task(
    help={
        "job": "Job id.",
        "run": RUN_HELP + " Its last job.",
        "err": "Show the job's stderr file instead of its stdout.",
        "follow": "Keep printing as the file grows until the job ends; then exit non-zero if it failed.",
        "tail": "Only the last N lines (0: all).",
        "machine": MACHINE_HELP,
    }
)
def logs(c, job="", run="", err=False, follow=False, tail=0, machine=None):
    """Print (or --follow) a job's stdout or stderr file."""
    import sys

    from titanenv.slurm import jobs

    ids, record = _job_ids(c, job, run, machine, what="logs")
    job_id = ids[-1]
    if record is None:
        from titanenv.runs import find_job

        record = find_job(load({"machine": machine}), job_id)
    paths = jobs.log_paths(job_id, record_script=record.script_path if record else None)
    path = paths.stderr if err else paths.stdout
    if follow:
        final = jobs.follow(path, job_id=job_id, out=sys.stdout)
        if not final.succeeded:
            raise Exit(f"error: job {job_id} {final.state}" + (f" ({final.why})" if final.why else ""), code=1)
        return
    print(jobs.read_log(path, job_id=job_id, tail=int(tail)), end="")


@task(help={"job": JOB_HELP, "run": RUN_HELP + " All its jobs (a whole chain).", "machine": MACHINE_HELP})
def cancel(c, job="", run="", machine=None):
    """Cancel jobs, or every job of a run."""
    from titanenv.slurm import jobs

    ids, _ = _job_ids(c, job, run, machine, what="cancel")
    print(jobs.table(jobs.cancel(ids)))


@task(
    help={
        "job": JOB_HELP + " Default: the jobs of the newest run that submitted any.",
        "run": RUN_HELP + " All its jobs (a whole chain).",
        "timeout": "Give up (exit 1) after this many seconds; 0: wait as long as it takes.",
        "interval": "Seconds between the first checks (e.g. 0.5); it backs off to 10 s.",
        "machine": MACHINE_HELP,
    }
)
def wait(c, job="", run="", timeout=0, interval=0.5, machine=None):
    """Block until jobs end; exit non-zero if one did not complete (for CI chains)."""
    from titanenv.slurm import jobs

    ids, _ = _job_ids(c, job, run, machine, what="wait", latest=True)
    jobs.wait(ids, timeout=float(timeout) or None, interval=float(interval))


ns = Collection(status, logs, cancel, wait)
