"""Bad input: one line that says what to fix, with Slurm's own words; nothing half-written."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.fixtures.slurm import LocalSlurm
from tests.helpers import REPO_ROOT, one_line_error, run_invoke, submitted_ids
from titanenv import sbatch
from titanenv.config import load_config
from titanenv.runs import new_run
from titanenv.slurm import SubmitError, submit
import titanenv.slurm


def runs_left(home: Path) -> list[Path]:
    """Every file under any runs directory of this home."""
    return [p for p in home.glob("trustllm/scratch/**/runs/**/*") if p.is_file()]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--partition", "huge"], "flag --partition: slurm.partition: expected 'debug', 'normal' or 'large' (got 'huge')"),
        (["--time", "25h"], "flag --time: slurm.time: '25h' is not a Slurm time limit; use MM, HH:MM:SS or D-HH:MM:SS"),
        (["--nodes", "two"], "flag --nodes: slurm.nodes: "),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(probe_project: Path, flags: list[str], expected: str) -> None:
    line = one_line_error(run_invoke("probe.submit", *flags, cwd=probe_project))
    assert line.startswith("error: " + expected)
    assert runs_left(Path.home()) == []


def test_sbatch_missing_from_path(probe_project: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    line = one_line_error(run_invoke("probe.submit", cwd=probe_project, env={"PATH": str(empty)}))
    assert line == "error: sbatch not found on PATH: run this on a login node of a Slurm cluster (or load its Slurm module)"
    assert not list(Path.home().glob("trustllm/scratch/**/runs"))


def test_rejected_submission_leaves_nothing(probe_project: Path, slurm_env: LocalSlurm) -> None:
    line = one_line_error(run_invoke("probe.submit", "--nodes", "3", cwd=probe_project))
    # Slurm's reason (its words depend on what it checks first), then what to change.
    assert line.startswith("error: sbatch rejected the job: Batch job submission failed: ")
    assert line.endswith("(ask for fewer than 3 nodes (--nodes) or another partition kind (--partition); "
                         "partition kind debug = devel)")
    assert runs_left(Path.home()) == []
    assert not list(Path.home().glob("trustllm/scratch/**/runs/probe/*"))
    assert slurm_env.job_ids() == []


def test_time_over_the_partition_limit_is_rejected(slurm_env: LocalSlurm) -> None:
    # devel (the debug kind) allows 2 hours on the test cluster.
    config = load_config(REPO_ROOT, flags={"machine": "local", "slurm.time": "3:00:00"})
    run = new_run(config, "train")
    script = sbatch.preprocess_script(config, run_dir=run.path, command=["true"])
    with pytest.raises(SubmitError) as rejected:
        submit(config, run, script, echo=lambda _: None)
    assert str(rejected.value).startswith(
        "sbatch rejected the job: Batch job submission failed: Requested time limit is invalid "
        "(missing or exceeds some limit) (shorten --time 3:00:00"
    )
    assert not run.path.exists() and not run.path.parent.exists()


def test_a_link_refused_mid_chain_cancels_the_links_before_it(
    slurm_env: LocalSlurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm accepts the first link and refuses the second: no job is left, no record claims one."""
    real = shutil.which("sbatch")
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "sbatch"
    calls = tmp_path / "calls"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"echo x >> {calls}\n"
        f'if [ "$(wc -l < {calls})" -ge 2 ]; then\n'
        '  echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" >&2; exit 1\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")
    config = load_config(REPO_ROOT, flags={"machine": "local"})
    run = new_run(config, "train")
    script = sbatch.preprocess_script(config, run_dir=run.path, command=["sleep", "300"])

    with pytest.raises(SubmitError) as refused:
        submit(config, run, script, chain=3, echo=lambda _: None)

    message = str(refused.value)
    assert message.startswith("sbatch rejected the job: Batch job submission failed: Job violates accounting/QOS policy")
    first = message.rsplit("cancelled job(s) ", 1)[1]
    assert first.isdigit()
    assert slurm_env.job(first).state == "CANCELLED"
    assert not config.paths.runs_dir.exists()


def test_a_record_that_cannot_be_written_cancels_the_jobs(
    slurm_env: LocalSlurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(titanenv.slurm, "write_record", disk_full)
    config = load_config(REPO_ROOT, flags={"machine": "local"})
    run = new_run(config, "train")
    script = sbatch.preprocess_script(config, run_dir=run.path, command=["sleep", "300"])

    with pytest.raises(SubmitError, match=r"^could not write the run's files: \[Errno 28\] No space left on device; "
                                          r"cancelled job\(s\) \d+, \d+$"):
        submit(config, run, script, chain=2, echo=lambda _: None)

    assert slurm_env.job_ids() == []
    assert not config.paths.runs_dir.exists()


def test_job_tasks_refuse_bad_ids_in_one_line(slurm_env: LocalSlurm) -> None:
    line = one_line_error(run_invoke("jobs.status", "--job", "12x"))
    assert line == "error: job id '12x': expected a number such as 123 (or 123_4 for an array task)"
    line = one_line_error(run_invoke("jobs.wait", "--job", "999999"))
    assert line.startswith("error: job 999999 is unknown to Slurm here")
    line = one_line_error(run_invoke("jobs.logs", "--run", "nothing-here"))
    assert line.startswith("error: no run 'nothing-here' under ")


# --- values that reach #SBATCH lines ----------------------------------------------------

LINE_BREAK = "contains a line break, which would end its #SBATCH line"


def _user_file(text: str) -> None:
    path = Path.home() / ".config" / "titanenv" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _machine_file(project: Path, old: str, new: str) -> int:
    """Replace ``old`` in the project's local profile; the line of the change."""
    path = project / "machines" / "local.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return text[: text.index(old)].count("\n") + 1


def test_sbatch_values_with_a_line_break_are_refused_naming_the_setting(probe_project: Path, tmp_path: Path) -> None:
    """sbatch read such a value as two lines ("line 4: Unmatched `'`"), naming no setting."""
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["--job-name", "train\n#SBATCH --mem=1"], {}, f"error: flag --job-name: slurm.job_name: {LINE_BREAK}"),
        (["--account", "proj\nx"], {}, f"error: flag --account: slurm.account: {LINE_BREAK}"),
        (["--job-name", "x" * 1025], {}, "error: flag --job-name: slurm.job_name: is 1025 characters long; Slurm takes at most 1024"),
        # Slurm takes it, then fails the job: it cannot open <run>/a/b-<id>.out.
        (["--job-name", "a/b"], {}, "error: flag --job-name: slurm.job_name: contains '/'; the job's logs are named after it"),
        ([], {"INVOKE_SLURM_JOB_NAME": "a\tb"},
         "error: env INVOKE_SLURM_JOB_NAME: slurm.job_name: contains the control character '\\t'; an #SBATCH value is printable text"),
    ]
    for flags, env, expected in cases:
        line = one_line_error(run_invoke("probe.submit", *flags, cwd=probe_project, env=env))
        assert line.startswith(expected), (flags, env, line)
    _user_file('slurm:\n  options:\n    mail-type: "ALL\\nx"\n')
    line = one_line_error(run_invoke("probe.submit", cwd=probe_project))
    assert line.startswith(f"error: ~/.config/titanenv/config.yaml:3: slurm.options.mail-type: {LINE_BREAK}")
    _user_file("slurm:\n  options:\n    mail type: ALL\n")
    line = one_line_error(run_invoke("probe.submit", cwd=probe_project))
    assert line.startswith("error: ~/.config/titanenv/config.yaml:3: slurm.options.mail type: 'mail type' is not an sbatch long option name")
    _user_file("")
    # The machine's own values: account, partition and QoS names, extra options.
    machine_cases = [
        ('account: ""', 'account: "a\\nb"', f"cluster.account: {LINE_BREAK}"),
        ("debug: devel,", 'debug: "devel\\nx",', f"cluster.partitions.gpu.debug: {LINE_BREAK}"),
        ("debug: devel,", 'debug: {partition: devel, qos: "q\\rx"},', f"cluster.partitions.gpu.debug.qos: {LINE_BREAK}"),
        ("launcher: torchrun", 'launcher: torchrun\n  sbatch_options: {constraint: "a\\nb"}',
         f"cluster.sbatch_options.constraint: {LINE_BREAK}"),
    ]
    original = (probe_project / "machines" / "local.yaml").read_text()
    for old, new, expected in machine_cases:
        number = _machine_file(probe_project, old, new) + (1 if "sbatch_options" in new else 0)
        line = one_line_error(run_invoke("probe.submit", cwd=probe_project))
        assert line.startswith(f"error: machines/local.yaml:{number}: {expected}"), line
        (probe_project / "machines" / "local.yaml").write_text(original)
    # A runs directory may hold $(...), quotes and ; (tested elsewhere), but not a line break: --output.
    runs = tmp_path / "runs\nx"
    line = one_line_error(run_invoke("probe.submit", cwd=probe_project, env={"INVOKE_PATHS_RUNS_DIR": str(runs)}))
    logs = repr(str(runs / "probe"))[:-1]  # then the run's own name
    assert line.startswith(f"error: env INVOKE_PATHS_RUNS_DIR: paths.runs_dir: the job's log directory {logs}/")
    assert LINE_BREAK in line
    assert runs_left(Path.home()) == [] and not runs.exists()


# Printable, so Slurm takes it, though sbatch's directive parser reads quotes, # and \ its own way.
ODD_NAME = "it's \"q\" #1 \\ $(touch INJECTED); `x` é, 100%"


def test_printable_names_reach_slurm_exactly(probe_project: Path, slurm_env: LocalSlurm, tmp_path: Path) -> None:
    result = run_invoke(
        "probe.submit", "--job-name", ODD_NAME, "--account", "acct #2 \\x 'q'", "--command", "true",
        cwd=probe_project, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (job_id,) = submitted_ids(result.stdout)
    fields = slurm_env.run(["squeue", "--noheader", "--states=all", "--jobs", job_id, "--format=%j\t%a"]).stdout
    assert fields.rstrip("\n").split("\t") == [ODD_NAME, "acct #2 \\x 'q'"]
    assert slurm_env.wait(job_id).state == "COMPLETED"  # its logs, named after it, could be opened
    assert not list(Path.home().rglob("INJECTED")) and not list(probe_project.rglob("INJECTED"))
