"""Reading Slurm's output: both JSON generations, scontrol lines, error text, #SBATCH lines."""

from __future__ import annotations

import pytest

from titanenv.slurm import SubmitError, normalize_dependency
from titanenv.slurm.cli import SlurmCommandError, _hint, exit_status, parse_scontrol, slurm_message, state_name
from titanenv.slurm.jobs import Job, elapsed_text, from_sacct, from_squeue
from titanenv.slurm.script import directives, expand_pattern


def test_squeue_json_of_22_05_and_of_23_02_and_later_read_the_same() -> None:
    # 22.05 (Debian bookworm): plain numbers, a state string, a raw wait status.
    old = {
        "job_id": 41, "name": "train", "job_state": "FAILED", "state_reason": "NonZeroExitCode",
        "start_time": 1000, "end_time": 1075, "node_count": 2, "nodes": "node[1-2]", "exit_code": 3 << 8,
    }
    # 23.02+: {"set", "infinite", "number"} numbers, a list of state flags, an exit-code object.
    new = {
        "job_id": 41, "name": "train", "job_state": ["FAILED"], "state_reason": "NonZeroExitCode",
        "start_time": {"set": True, "infinite": False, "number": 1000},
        "end_time": {"set": True, "infinite": False, "number": 1075},
        "node_count": {"set": True, "infinite": False, "number": 2}, "nodes": "node[1-2]",
        "exit_code": {"status": ["EXITED"], "return_code": {"set": True, "infinite": False, "number": 3}},
    }
    assert from_squeue(old, now=2000) == from_squeue(new, now=2000)
    job = from_squeue(new, now=2000)
    assert (job.state, job.elapsed, job.nodes, job.exit_code, job.why) == ("FAILED", 75, 2, 3, "exit code 3")


def test_elapsed_of_running_and_pending_jobs() -> None:
    running = from_squeue({"job_id": 1, "job_state": "RUNNING", "start_time": 1000, "end_time": 5000}, now=4723)
    assert running.elapsed == 3723 and elapsed_text(running.elapsed) == "1:02:03"
    pending = from_squeue({"job_id": 2, "job_state": "PENDING", "state_reason": "Dependency", "start_time": 0}, now=10)
    assert pending.elapsed == 0 and pending.why == "Dependency"
    assert elapsed_text(2 * 86400 + 5) == "2-00:00:05" and elapsed_text(59) == "0:59" and elapsed_text(None) == "-"


def test_state_and_exit_helpers() -> None:
    assert state_name(["RUNNING", "COMPLETING"]) == "RUNNING" and state_name("PENDING") == "PENDING"
    assert state_name(None) == "UNKNOWN"
    assert exit_status(0) == 0 and exit_status(256) == 1 and exit_status({"return_code": {"set": False}}) is None


def test_sacct_rows() -> None:
    job = from_sacct(
        {"JobID": "9", "JobName": "x", "State": "CANCELLED by 0", "Elapsed": "1-02:03:04", "NNodes": "4",
         "NodeList": "n[1-4]", "ExitCode": "0:15"},
        "sacct",
    )
    assert (job.state, job.elapsed, job.nodes, job.exit_code) == ("CANCELLED", 93784, 4, 0)


def test_scontrol_line_with_spaces_in_values() -> None:
    line = (
        "JobId=5 JobName=my job UserId=root(0) GroupId=root(0) MCS_label=N/A JobState=RUNNING Reason=None "
        "AllocNode:Sid=localhost:99 CPUs/Task=2 StdOut=/runs/a b/train-5.out StdErr=/runs/a b/train-5.err"
    )
    fields = parse_scontrol(line)
    assert fields["JobName"] == "my job"
    assert fields["MCS_label"] == "N/A" and fields["CPUs/Task"] == "2" and fields["AllocNode:Sid"] == "localhost:99"
    assert fields["StdOut"] == "/runs/a b/train-5.out" and fields["StdErr"] == "/runs/a b/train-5.err"


def test_slurm_error_lines_become_one() -> None:
    stderr = (
        "sbatch: error: invalid partition specified: nope\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    )
    assert slurm_message(stderr) == (
        "invalid partition specified: nope; Batch job submission failed: Invalid partition name specified"
    )


def test_directives_stop_at_the_first_command_and_are_unquoted() -> None:
    script = (
        "#!/usr/bin/env bash\n# a comment\n#SBATCH --job-name='my job'\n#SBATCH --output=/r/%x-%j.out\n\n"
        "#SBATCH --nodes=2\nset -e\n#SBATCH --time=1:00:00\n"
    )
    assert directives(script) == {"job-name": "my job", "output": "/r/%x-%j.out", "nodes": "2"}
    assert expand_pattern("/r/%x-%j-%5j-%%.out", job_id="42", job_name="my job") == "/r/my job-42-00042-%.out"


@pytest.mark.parametrize(
    ("given", "expected"),
    [("123", "afterok:123"), ("123:124", "afterok:123:124"), ("afterany:7", "afterany:7"),
     ("afterok:7,afternotok:8", "afterok:7,afternotok:8"), ("singleton", "singleton"), ("after:5+10", "after:5+10")],
)
def test_dependencies_accepted(given: str, expected: str) -> None:
    assert normalize_dependency(given) == expected


@pytest.mark.parametrize("given", ["", "afterok:", "afterok:x", "before:1", "123;rm -rf /", "afterok:1 afterok:2"])
def test_dependencies_refused(given: str) -> None:
    with pytest.raises(SubmitError, match=r"^--dependency .*: give a job id \(123\)"):
        normalize_dependency(given)


def test_reason_column() -> None:
    assert Job("1", state="COMPLETED", reason="None").why == ""
    assert Job("1", state="CANCELLED", reason="DependencyNeverSatisfied").why == "DependencyNeverSatisfied"
    assert Job("1", state="TIMEOUT", reason="TimeLimit", exit_code=0).why == "TimeLimit"


def test_a_host_without_slurm_configuration_is_named_as_such() -> None:
    # What Debian's squeue prints on a host with the packages but no slurm.conf.
    stderr = (
        "squeue: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n"
        "squeue: error: fetch_config: DNS SRV lookup failed\n"
        "squeue: error: _establish_config_source: failed to fetch config\n"
        "squeue: fatal: Could not establish a configuration source\n"
    )
    error = SlurmCommandError(["squeue", "--json"], 1, stderr, hint=_hint(stderr))
    assert str(error) == (
        "squeue failed: Could not establish a configuration source (this host has Slurm's commands but no "
        "cluster configuration: run on a login node, or set SLURM_CONF)"
    )
