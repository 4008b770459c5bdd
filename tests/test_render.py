"""sbatch rendering: every template for every machine, quoting, expected #SBATCH lines."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from titanenv import sbatch
from titanenv.config import known_machines, load_config
from titanenv.errors import ConfigError, RenderError
from titanenv.slurm.script import directives as read_directives
from titanenv.slurm.script import sbatch_arguments

# Values that would break or inject into a naively written script.
HOSTILE = [
    "with space",
    "it's",
    'say "hi"',
    "$(touch INJECTED)",
    "`touch INJECTED`",
    "semi;colon && echo",
    "new\nline",
    "glob*?[x]",
    "#not-a-comment",
    "-dash",
    "",
]


def render_all(config, run_dir: Path, command: list[str]) -> dict[str, str]:
    return {
        "preprocess.sbatch.j2": sbatch.preprocess_script(config, run_dir=run_dir, command=command),
        "preprocess_parallel.sbatch.j2": sbatch.preprocess_parallel_script(config, run_dir=run_dir, command=command),
        "train.sbatch.j2": sbatch.train_script(config, run_dir=run_dir, command=command),
        "export.sbatch.j2": sbatch.export_script(config, run_dir=run_dir, command=command),
    }


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


@pytest.fixture(scope="module")
def shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck; .ci/run installs it)")
    return path


def test_templates_cover_every_submitting_job() -> None:
    on_disk = {p.name for p in (REPO_ROOT / "sbatch_templates").glob("*.sbatch.j2")} - {"base.sbatch.j2"}
    assert on_disk == set(sbatch.TEMPLATES)


@pytest.mark.parametrize("machine", known_machines(REPO_ROOT))
def test_every_template_passes_bash_and_shellcheck(machine: str, tmp_path: Path, shellcheck: str) -> None:
    config = load_config(REPO_ROOT, flags={"machine": machine, "slurm.job_name": "job name's"}, environ={})
    run_dir = tmp_path / "run dir with 'quotes' and $(subshell)"
    scripts = render_all(config, run_dir, ["python", "-m", "titanenv.example", *HOSTILE])
    for name, script in scripts.items():
        path = tmp_path / f"{machine}-{name}.sh"
        path.write_text(script)
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{machine} {name}: {syntax.stderr}"
        lint = subprocess.run([shellcheck, "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{machine} {name}:\n{lint.stdout}"


def test_jwb_training_header() -> None:
    config = load_config(REPO_ROOT, flags={"machine": "jwb", "slurm.nodes": 2}, environ={})
    lines = directives(sbatch.train_script(config, run_dir=Path("/r"), command=["x"]))
    assert "--gres=gpu:4" in lines
    assert "--partition=develbooster" in lines
    assert "--account=trustllm-eu" in lines
    assert "--cpus-per-task=48" in lines
    assert "--threads-per-core=1" in lines
    assert "--ntasks-per-node=1" in lines
    assert "--nodes=2" in lines


@pytest.mark.parametrize(("kind", "partition"), [("debug", "develbooster"), ("normal", "booster"), ("large", "largebooster")])
def test_partition_kinds_map_to_the_machine_partitions(kind: str, partition: str) -> None:
    config = load_config(REPO_ROOT, flags={"machine": "jwb", "slurm.partition": kind}, environ={})
    assert f"--partition={partition}" in directives(sbatch.train_script(config, run_dir=Path("/r"), command=["x"]))


def test_cpu_jobs_use_cpu_partitions_where_the_machine_has_them() -> None:
    for machine, partition in (("jwc", "devel"), ("jrc", "dc-cpu-devel")):
        config = load_config(REPO_ROOT, flags={"machine": machine}, environ={})
        lines = directives(sbatch.preprocess_script(config, run_dir=Path("/r"), command=["x"]))
        assert f"--partition={partition}" in lines
        assert not any(line.startswith("--gres") for line in lines)
    config = load_config(REPO_ROOT, flags={"machine": "jrc"}, environ={})
    assert "--partition=dc-gpu-devel" in directives(sbatch.train_script(config, run_dir=Path("/r"), command=["x"]))


def test_mn5a_asks_for_a_qos_not_a_partition() -> None:
    config = load_config(REPO_ROOT, flags={"machine": "mn5a"}, environ={})
    lines = directives(sbatch.train_script(config, run_dir=Path("/r"), command=["x"]))
    assert "--qos=acc_debug" in lines and "--account=ehpc09" in lines and "--cpus-per-task=80" in lines
    assert not any(line.startswith("--partition") for line in lines)


def test_local_has_no_account_and_no_modules() -> None:
    config = load_config(REPO_ROOT, environ={})
    script = sbatch.train_script(config, run_dir=Path("/r"), command=["x"])
    assert not any(line.startswith("--account") for line in directives(script))
    assert "module " not in script


def test_jsc_training_script_sets_network_and_modules() -> None:
    config = load_config(REPO_ROOT, flags={"machine": "jwb"}, environ={})
    script = sbatch.train_script(config, run_dir=Path("/r"), command=["x"])
    assert 'MASTER_ADDR="$MASTER_ADDR"i' in script
    assert "export GLOO_SOCKET_IFNAME=ib0" in script
    assert "export NCCL_IB_TIMEOUT=20" in script
    assert "module load Stages/2025\nmodule load GCC\nmodule try-load Apptainer-Tools" in script
    assert "--rdzv_backend=c10d" in script
    assert "--nproc_per_node=4" in script


# Each machine's launch line, as the original environment had it: torchrun_jsc
# at JSC, the InfiniBand `i` suffix on JUWELS and JURECA but not on JUPITER.
LAUNCH_LINES = {
    "local": ("torch.distributed.run", False),
    "jwb": ("torchrun_jsc", True),
    "jwc": ("torchrun_jsc", True),
    "jrc": ("torchrun_jsc", True),
    "jpb": ("torchrun_jsc", False),
    "mn5a": ("torch.distributed.run", False),
}


@pytest.mark.parametrize("machine", sorted(LAUNCH_LINES))
def test_each_machine_renders_its_launcher_and_rendezvous_host(machine: str) -> None:
    module, suffix = LAUNCH_LINES[machine]
    config = load_config(REPO_ROOT, flags={"machine": machine}, environ={})
    script = sbatch.train_script(config, run_dir=Path("/r"), command=["x"])
    srun = script[script.index("srun "):]
    words = shlex.split(srun.replace("\\\n", " "))
    at = words.index("-m")
    assert words[at - 2:at + 2] == [words[at - 2], "-u", "-m", module]
    assert words[at - 2].endswith("python")
    assert ('MASTER_ADDR="$MASTER_ADDR"i' in script) is suffix


def test_gpu_jobs_go_only_to_gpus_the_containers_cuda_drives() -> None:
    from titanenv.launch import unsupported_gpus

    # CUDA 13 (the pinned image) dropped Volta: JUWELS Cluster's V100s cannot run it; the others can.
    for machine in known_machines(REPO_ROOT):
        config = load_config(REPO_ROOT, flags={"machine": machine}, environ={})
        problem = unsupported_gpus(config)
        assert (problem is not None) is (machine == "jwc"), (machine, problem)
    jwc = load_config(REPO_ROOT, flags={"machine": "jwc"}, environ={})
    assert unsupported_gpus(jwc) == ("the GPUs of jwc (compute capability 7.0) are older than the container's "
                                     "CUDA 13.3 supports (7.5 and newer)")
    older = load_config(REPO_ROOT, flags={"machine": "jwc", "container.contents.cuda": "12.9"}, environ={})
    assert unsupported_gpus(older) is None
    result = subprocess.run([sys.executable, "-m", "invoke", "train.submit", "--machine", "jwc", "--dry"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "a training job there would die at its first CUDA call" in result.stderr


def test_local_jobs_rendezvous_on_a_free_port_and_containers_need_a_fixed_one() -> None:
    local = load_config(REPO_ROOT, environ={})
    script = sbatch.train_script(local, run_dir=Path("/r"), command=["x"])
    assert "s.bind((\"\", 0))" in script and "export MASTER_PORT=" not in script
    podman = load_config(REPO_ROOT, flags={"cluster.container_runtime": "podman"}, environ={})
    with pytest.raises(ConfigError, match=r"machines/local.yaml:\d+: cluster.network.master_port: port 0"):
        sbatch.train_script(podman, run_dir=Path("/r"), command=["x"])


def test_every_machine_has_a_launch_line_expectation() -> None:
    assert sorted(LAUNCH_LINES) == sorted(known_machines(REPO_ROOT))


def test_hostile_values_reach_the_command_exactly(tmp_path: Path) -> None:
    """Run a rendered script with a stand-in srun: the argv must arrive unchanged, nothing injected."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/usr/bin/env bash\nexec "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    run_dir = tmp_path / "run 'dir' $(touch INJECTED)"
    run_dir.mkdir()
    out = tmp_path / "argv.bin"
    config = load_config(REPO_ROOT, environ={})
    command = ["python3", "-c", "import sys; open(sys.argv[1], 'wb').write('\\0'.join(sys.argv[2:]).encode())", str(out), *HOSTILE]
    script = tmp_path / "job.sh"
    script.write_text(sbatch.preprocess_script(config, run_dir=run_dir, command=command))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_CPUS_PER_TASK": "1"}
    result = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().decode().split("\0") == HOSTILE
    assert not list(tmp_path.rglob("INJECTED"))


def test_an_unquoted_value_fails_rendering(project: Path) -> None:
    (project / "sbatch_templates" / "preprocess.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block body %}cd {{ workdir }}\n{% endblock %}'
    )
    config = load_config(project, environ={})
    with pytest.raises(RenderError, match="unquoted value"):
        sbatch.preprocess_script(config, run_dir=Path("/r"), command=["x"])


def test_an_undefined_variable_fails_rendering(project: Path) -> None:
    (project / "sbatch_templates" / "preprocess.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block body %}cd {{ no_such_thing | q }}\n{% endblock %}'
    )
    config = load_config(project, environ={})
    with pytest.raises(RenderError, match="no_such_thing"):
        sbatch.preprocess_script(config, run_dir=Path("/r"), command=["x"])


def test_a_machine_can_override_a_template(project: Path) -> None:
    site = project / "sbatch_templates" / "jsc"
    site.mkdir()
    (site / "train.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block body %}echo JSC-SPECIFIC {{ workdir | q }}\n{% endblock %}'
    )
    jwb = sbatch.train_script(load_config(project, flags={"machine": "jwb"}, environ={}), run_dir=Path("/r"), command=["x"])
    mn5a = sbatch.train_script(load_config(project, flags={"machine": "mn5a"}, environ={}), run_dir=Path("/r"), command=["x"])
    assert "echo JSC-SPECIFIC /r" in jwb
    assert "JSC-SPECIFIC" not in mn5a


def test_quoting_filters_refuse_what_they_cannot_quote() -> None:
    with pytest.raises(RenderError):
        sbatch.qjoin("a string, not a list")
    with pytest.raises(RenderError):
        sbatch.envname("NOT-A-NAME")
    with pytest.raises(RenderError):
        sbatch.q(None)


@pytest.mark.parametrize(
    "value", [v for v in HOSTILE if "\n" not in v] + ["a\\b", "trailing\\", "\\'", "100%", "é", 7]
)
def test_sbatch_values_read_back_exactly_as_sbatch_parses_them(value: object) -> None:
    """sbatch's directive parser takes \\ as an escape even inside quotes, unlike the shell."""
    line = f"--job-name={sbatch.sbatch_value(value)}"
    assert sbatch_arguments(line) == [f"--job-name={value}"]
    assert read_directives(f"#!/bin/bash\n#SBATCH {line}\n") == {"job-name": str(value)}


def test_sbatch_value_refuses_a_line_break() -> None:
    with pytest.raises(RenderError, match="line break"):
        sbatch.sbatch_value("a\nb")
