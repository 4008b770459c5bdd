"""The README's CI job, for real on the `local` machine: one chained `invoke`, then `jobs.wait`.

The online steps (env.setup, env.download) run first against local stand-ins
for GitHub and PyPI; the offline chain then runs with those gone and every
proxy pointing nowhere, and its training job goes to the test suite's Slurm.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import World, error_line, ok, run_invoke, submitted_ids
from tests.fixtures.slurm import LocalSlurm

pytestmark = [pytest.mark.slurm, pytest.mark.train]

CHAIN = ["container.build", "--offline", "container.activate", "env.setup", "--offline", "data.preprocess",
         "data.preprocess", "--valid", "train.submit", "--steps", "5", "--batch-size", "2", "--name", "ci"]
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "PIP_NO_INDEX": "1"}


def test_the_readme_ci_chain_runs_on_local_with_slurm(tmp_path: Path, slurm_env: LocalSlurm) -> None:
    world = World(tmp_path)
    dataset = world.scratch / "data" / "openwebtext_gpt2" / "train"

    # Without the offline bundle the chain stops at env.setup: one line, nothing after it ran.
    line = error_line(world.invoke(*CHAIN, env=NO_NETWORK))
    assert "no offline bundle at" in line and "env.download" in line
    assert not dataset.with_suffix(".idx").exists()
    assert "no run under" in error_line(world.invoke("jobs.wait"))

    # On a login node (network): make the bundle. Then the network is gone.
    ok(world.invoke("container.download", "env.setup", "env.download"))
    for gone in (world.repos, world.venv, world.sources, world.wheels):
        shutil.rmtree(gone)
    world.settings["env"]["pip_args"] = []
    world.write()

    chained = world.invoke(*CHAIN, env=NO_NETWORK)
    out = ok(chained)
    assert out.count("no container to ") == 2, out  # build and activate: runtime none on local
    assert "files verified" in out
    assert world.python("import alpha, beta, tinyextra; print(alpha.VERSION, beta.VERSION)") == "1.0 1.1"
    assert dataset.with_suffix(".bin").stat().st_size > 0
    (job_id,) = submitted_ids(out)

    waited = world.invoke("jobs.wait", "--interval", "0.5")
    log = run_invoke("jobs.logs", "--job", job_id).stdout + run_invoke("jobs.logs", "--job", job_id, "--err").stdout
    assert waited.returncode == 0, (waited.stdout + waited.stderr + log)[-4000:]
    assert f"job {job_id}" in waited.stdout.splitlines()[0]
    steps = [int(s) for s in re.findall(r"step:\s*(\d+)\s+loss:", re.sub(r"\x1b\[[0-9;]*m", "", log))]
    assert steps and max(steps) == 5 and "Training completed" in log, log[-4000:]
    checkpoints = world.scratch / "experiments" / "ci" / "checkpoint"
    assert (checkpoints / "step-5").is_dir(), sorted(p.name for p in checkpoints.parent.rglob("*"))
