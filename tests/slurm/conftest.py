"""Fixtures of the Slurm tests: a project with a small submitting task, and config helpers."""

from __future__ import annotations

from pathlib import Path

import pytest


# A submitting task written the way data.preprocess and train.submit are:
# the shared Slurm flags, load(), render, titanenv.slurm.submit.
PROBE_TASKS = '''"""A submitting task for the Slurm tests."""

from invoke import Collection

from tasks._common import CHAIN_HELP, MACHINE_HELP, SLURM_HELP, load, slurm_flags, task


@task(help={**SLURM_HELP, "chain": CHAIN_HELP, "machine": MACHINE_HELP, "command": "Shell command of each task."})
def submit(c, command="true", nodes=None, time=None, partition=None, account=None, job_name=None,
           dependency=None, dry=False, chain=1, machine=None):
    """Submit COMMAND on every task of the job."""
    from titanenv import sbatch, slurm
    from titanenv.runs import new_run

    config = load({**slurm_flags(nodes, time, partition, account, job_name), "machine": machine})
    run = new_run(config, "probe")
    script = sbatch.preprocess_parallel_script(config, run_dir=run.path, command=["bash", "-c", command])
    slurm.submit(config, run, script, dry=dry, chain=int(chain), dependency=dependency)


ns = Collection(submit)
'''


@pytest.fixture
def probe_project(project: Path) -> Path:
    """The scratch project with a `probe.submit` task beside the real ones."""
    (project / "tasks" / "probe.py").write_text(PROBE_TASKS)
    tasks_py = project / "tasks.py"
    tasks_py.write_text(tasks_py.read_text() + "\nfrom tasks import probe  # noqa: E402\n\nns.add_collection(probe)\n")
    return project
