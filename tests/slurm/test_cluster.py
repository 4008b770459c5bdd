"""The test suite's Slurm cluster itself: shaped like the local profile, repeatable, leaves nothing behind."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.fixtures import slurm as slurm_fixture
from tests.fixtures.slurm import MARKER, LocalSlurm, _alive, _free_ports as free_ports, _marked_pids
from tests.helpers import REPO_ROOT
from titanenv.config import load_config


def test_partitions_are_the_local_profiles(slurm_cluster: LocalSlurm) -> None:
    config = load_config(REPO_ROOT, flags={"machine": "local"})
    wanted = {getattr(config.settings.cluster.partitions.gpu, kind).partition for kind in ("debug", "normal", "large")}
    info = json.loads(slurm_cluster.run(["sinfo", "--json"]).stdout)
    partitions = {p for node in info["nodes"] for p in node["partitions"]}
    assert wanted <= partitions
    assert sorted(node["name"] for node in info["nodes"]) == ["node1", "node2"]
    # The profile's cores per node are this host's; the nodes have as many CPUs.
    assert {node["cpus"] for node in info["nodes"]} == {config.cores_per_node}


def test_fake_gpus_are_handed_out(slurm_env: LocalSlurm, tmp_path: Path) -> None:
    out = tmp_path / "gpus.txt"
    job = slurm_env.run(
        ["sbatch", "--parsable", "--gres=gpu:2", f"--output={out}", "--wrap", "echo $CUDA_VISIBLE_DEVICES"]
    ).stdout.strip()
    done = slurm_env.wait(job)
    assert done.state == "COMPLETED" and done.fields.get("TresPerNode") == "gres:gpu:2", done.fields
    if slurm_env.numbered_gpus:
        assert out.read_text().strip() == "0,1"


def test_a_second_cluster_starts_beside_and_after_the_first(
    slurm_cluster: LocalSlurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repeatable: another cluster runs beside the session's, stops cleanly, and starts again.

    The second time, the first port it picks is taken before the daemons bind
    it (as by another program starting meanwhile): it starts with others.
    """
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    picks: list[list[int]] = []

    def pick_a_taken_port_first(count: int) -> list[int]:
        ports = free_ports(count)
        if not picks:
            ports[0] = busy.getsockname()[1]
        picks.append(ports)
        return ports

    for round_ in range(2):
        if round_ == 1:
            monkeypatch.setattr(slurm_fixture, "_free_ports", pick_a_taken_port_first)
        with LocalSlurm.start() as other:
            assert other.state_dir != slurm_cluster.state_dir
            assert set(other.ports.values()).isdisjoint(slurm_cluster.ports.values())
            out = tmp_path / f"round{round_}.txt"
            job = other.run(["sbatch", "--parsable", f"--output={out}", "--wrap", "echo $SLURM_JOB_ID"]).stdout.strip()
            # A long job left running must not survive the stop either.
            other.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "sleep 300"])
            assert other.wait(job).state == "COMPLETED"
            assert out.read_text().strip() == job
            daemons = [proc.pid for proc in other.processes.values()]
            state_dir = other.state_dir
        # Stopped by PID: no daemon or job step of that cluster is alive (zombies awaiting
        # their parent do not count: they hold no port and run nothing).
        assert not [pid for pid in daemons if _alive(pid)]
        assert not [pid for pid in _marked_pids(str(state_dir)) if _alive(pid)], MARKER
        assert not state_dir.exists()
    assert len(picks) == 2 and busy.getsockname()[1] not in other.ports.values()
    busy.close()
    # The session's cluster is untouched: both its nodes still up and idle.
    assert slurm_cluster._nodes_idle()
