"""Fixtures of the Slurm tests: a project with a small submitting task, and config helpers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, run_invoke

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


def submitted_ids(stdout: str) -> list[str]:
    """Job ids from the `submitted job N: ...` lines of a submission."""
    return [line.split()[2].rstrip(":") for line in stdout.splitlines() if line.startswith("submitted job ")]


def invoke_ok(*args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = run_invoke(*args, cwd=cwd, env=env, timeout=120)
    assert result.returncode == 0, f"invoke {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The task failed with status 1 and exactly one `error: ...` line on stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
