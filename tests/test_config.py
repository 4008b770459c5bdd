"""Layered configuration: precedence, machine profiles, derived paths, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT, run_invoke
from titanenv.config import cache_environment, container_stem, known_machines, load_config
from titanenv.errors import ConfigError


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def edit_yaml(path: Path, update: dict) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    for dotted, value in update.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --- precedence --------------------------------------------------------------


def test_each_layer_overrides_the_one_below(project: Path, isolated_home: Path) -> None:
    invoke_yaml = project / "invoke.yaml"
    config = load_config(project, environ={})
    assert config.settings.slurm.time == "00:20:00"
    assert config.origin("slurm.time") == f"invoke.yaml:{line_of(invoke_yaml, 'time:')}"

    edit_yaml(project / "machines" / "local.yaml", {"slurm.time": "00:30:00"})
    config = load_config(project, environ={})
    assert config.settings.slurm.time == "00:30:00"
    assert config.origin("slurm.time").startswith("machines/local.yaml:")

    user_file = isolated_home / ".config" / "titanenv" / "config.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("slurm:\n  time: '00:40:00'\n")
    config = load_config(project, environ={})
    assert config.settings.slurm.time == "00:40:00"
    assert config.origin("slurm.time") == "~/.config/titanenv/config.yaml:2"

    environ = {"INVOKE_SLURM_TIME": "00:50:00"}
    config = load_config(project, environ=environ)
    assert config.settings.slurm.time == "00:50:00"
    assert config.origin("slurm.time") == "env INVOKE_SLURM_TIME"

    config = load_config(project, environ=environ, flags={"slurm.time": "01:00:00"})
    assert config.settings.slurm.time == "01:00:00"
    assert config.origin("slurm.time") == "flag --time"


def test_machine_is_chosen_by_flag_then_env_then_user_file_then_project(project: Path, isolated_home: Path) -> None:
    assert load_config(project, environ={}).machine == "local"
    user_file = isolated_home / ".config" / "titanenv" / "config.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("machine: jwb\n")
    assert load_config(project, environ={}).machine == "jwb"
    assert load_config(project, environ={"INVOKE_MACHINE": "jrc"}).machine == "jrc"
    assert load_config(project, environ={"INVOKE_MACHINE": "jrc"}, flags={"machine": "mn5a"}).machine == "mn5a"


def test_user_file_can_be_moved_by_env(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "mine.yaml"
    elsewhere.write_text("slurm:\n  nodes: 7\n")
    config = load_config(project, environ={"INVOKE_USER_CONFIG": str(elsewhere)})
    assert config.settings.slurm.nodes == 7
    assert config.origin("slurm.nodes") == f"{elsewhere}:2"


def test_env_values_are_parsed_by_type(project: Path) -> None:
    config = load_config(
        project,
        environ={
            "INVOKE_SLURM_NODES": "4",
            "INVOKE_CONTAINER_BINDS": "[/a, /b]",
            "INVOKE_CONTAINER_GPUS": "false",
            # A string setting keeps the text as it is, even if it looks like a number.
            "INVOKE_SLURM_JOB_NAME": "123",
        },
    )
    assert config.settings.slurm.nodes == 4
    assert config.settings.container.binds == ["/a", "/b"]
    assert config.settings.container.gpus is False
    assert config.settings.slurm.job_name == "123"


# --- machine profiles --------------------------------------------------------


def test_every_profile_validates() -> None:
    assert set(known_machines(REPO_ROOT)) >= {"local", "jwb", "jwc", "jrc", "jpb", "mn5a"}
    for machine in known_machines(REPO_ROOT):
        config = load_config(REPO_ROOT, flags={"machine": machine}, environ={})
        cluster = config.settings.cluster
        assert cluster.partitions.gpu.debug.partition or cluster.partitions.gpu.debug.qos
        assert config.cores_per_node >= 1


def test_jsc_facts_live_in_the_shared_base_once() -> None:
    jsc = REPO_ROOT / "machines" / "jsc.yaml"
    for machine in ("jwb", "jwc", "jrc", "jpb"):
        config = load_config(REPO_ROOT, flags={"machine": machine}, environ={})
        assert config.machine_chain == ("jsc", machine)
        assert config.settings.cluster.account == "trustllm-eu"
        assert config.origin("cluster.account") == f"machines/jsc.yaml:{line_of(jsc, 'account:')}"
        # The original added the InfiniBand `i` suffix on JUWELS and JURECA, not on JUPITER.
        assert config.settings.cluster.network.master_host_suffix == ("" if machine == "jpb" else "i")
        assert config.settings.cluster.launcher == "torchrun_jsc"
        assert config.settings.cluster.network.env == {"GLOO_SOCKET_IFNAME": "ib0", "NCCL_IB_TIMEOUT": "20"}
        assert config.settings.cluster.modules.load == ["Stages/2025", "GCC"]
        assert config.settings.cluster.container_runtime == "apptainer"
    for other in ("jwb.yaml", "jwc.yaml", "jrc.yaml", "jpb.yaml"):
        text = (REPO_ROOT / "machines" / other).read_text()
        facts = ("account:", "project_root:", "GLOO_SOCKET_IFNAME", "launcher:", "Stages/2025")
        for fact in facts + (() if other == "jpb.yaml" else ("master_host_suffix",)):
            assert fact not in text, f"{other} repeats {fact} from jsc.yaml"


@pytest.mark.parametrize(
    ("machine", "facts"),
    [
        ("jwb", {"cores_per_node": 48, "gpus_per_node": 4, "cuda_compute_capabilities": ["8.0"], "cpu_arch": "x86_64"}),
        ("jwc", {"cores_per_node": 48, "cuda_compute_capabilities": ["7.0"]}),
        ("jrc", {"cores_per_node": 128, "cuda_compute_capabilities": ["8.0", "9.0"]}),
        ("jpb", {"cores_per_node": 288, "cpu_arch": "aarch64", "cuda_compute_capabilities": ["9.0"]}),
        ("mn5a", {"cores_per_node": 80, "container_runtime": "singularity", "container_binary": "singularity",
                  "account": "ehpc09", "project_root": "/gpfs/projects", "scratch_root": "/gpfs/scratch"}),
        ("local", {"project_root": "~/trustllm/project", "scratch_root": "~/trustllm/scratch", "project": "trustllm",
                   "container_runtime": "none"}),
    ],
)
def test_machine_facts(machine: str, facts: dict) -> None:
    cluster = load_config(REPO_ROOT, flags={"machine": machine}, environ={}).settings.cluster
    for name, value in facts.items():
        assert getattr(cluster, name) == value, name


def test_mn5a_uses_qos_and_bsc_modules() -> None:
    cluster = load_config(REPO_ROOT, flags={"machine": "mn5a"}, environ={}).settings.cluster
    assert cluster.partitions.gpu.debug.qos == "acc_debug"
    assert cluster.partitions.gpu.normal.qos == "acc_ehpc"
    assert cluster.partitions.gpu.debug.partition == ""
    assert cluster.modules.load == ["gcc"] and cluster.modules.try_load == ["singularity"]


# --- derived paths -----------------------------------------------------------


def test_derived_paths_follow_the_original_layout(isolated_home: Path) -> None:
    config = load_config(REPO_ROOT, flags={"machine": "jpb"}, environ={"USER": "alice"})
    paths = config.paths
    user = config.user
    assert paths.project_dir == Path(f"/p/project1/trustllm-eu/{user}/torchtitan")
    assert paths.scratch_dir == Path(f"/p/scratch/trustllm-eu/{user}/torchtitan")
    assert paths.repos_dir == paths.project_dir / "repos"
    assert paths.venv_dir == paths.scratch_dir / "env_aarch64"
    for name in ("data_dir", "checkpoint_dir", "container_dir", "offline_dir", "cache_dir", "runs_dir"):
        assert getattr(paths, name).is_relative_to(paths.scratch_dir), name
    assert paths.container_build_dir != paths.container_dir


def test_local_paths_expand_home(isolated_home: Path) -> None:
    config = load_config(REPO_ROOT, flags={"user": "bob"}, environ={})
    assert config.paths.scratch_dir == isolated_home / "trustllm" / "scratch" / "trustllm" / "bob" / "torchtitan"


def test_container_names_derive_from_image_tail_and_arch() -> None:
    assert container_stem("torchtitan", "docker://nvcr.io/nvidia/pytorch:25.06-py3", "x86_64") == (
        "torchtitan_pytorch_25.06-py3_x86_64"
    )


def test_every_cache_points_into_scratch(isolated_home: Path) -> None:
    config = load_config(REPO_ROOT, environ={})
    env = cache_environment(config.paths.cache_dir)
    for name in ("PIP_CACHE_DIR", "TRITON_CACHE_DIR", "TORCH_HOME", "TORCH_EXTENSIONS_DIR", "HF_HOME",
                 "HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "APPTAINER_CACHEDIR", "APPTAINER_TMPDIR",
                 "SINGULARITY_CACHEDIR"):
        assert Path(env[name]).is_relative_to(config.paths.scratch_dir), name


def test_path_templates_are_overridable(project: Path) -> None:
    config = load_config(project, flags={"paths.data_dir": "/srv/shared/{user}/data"}, environ={"USER": "carol"})
    assert config.paths.data_dir == Path(f"/srv/shared/{config.user}/data")
    assert config.origin("paths.data_dir") == "flag --data-dir"


# --- bad input ---------------------------------------------------------------


def error_of(project: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(project, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_in_project_file_names_file_line_and_key(project: Path) -> None:
    path = project / "invoke.yaml"
    path.write_text(path.read_text().replace("  nodes: 1\n", "  nodes: 1\n  nodez: 2\n"))
    message = error_of(project, environ={})
    assert message.startswith(f"invoke.yaml:{line_of(path, 'nodez')}: slurm.nodez: unknown key")
    assert "did you mean 'nodes'" in message


def test_unknown_key_in_machine_file(project: Path) -> None:
    path = project / "machines" / "jwb.yaml"
    path.write_text(path.read_text().replace("  gpus_per_node: 4\n", "  gpus_per_nod: 4\n"))
    message = error_of(project, flags={"machine": "jwb"}, environ={})
    assert message.startswith(f"machines/jwb.yaml:{line_of(path, 'gpus_per_nod')}: cluster.gpus_per_nod: unknown key")


def test_wrong_type_names_file_and_key(project: Path) -> None:
    path = project / "machines" / "jwb.yaml"
    path.write_text(path.read_text().replace("cores_per_node: 48", "cores_per_node: many"))
    message = error_of(project, flags={"machine": "jwb"}, environ={})
    assert message.startswith(f"machines/jwb.yaml:{line_of(path, 'cores_per_node')}: cluster.cores_per_node:")
    assert "'many'" in message


def test_missing_machine_file_lists_known_ones(project: Path) -> None:
    message = error_of(project, environ={"INVOKE_MACHINE": "juwels"})
    assert message.startswith("env INVOKE_MACHINE: machine: no machine profile machines/juwels.yaml")
    assert "jwb" in message and "local" in message


def test_a_shared_base_is_not_a_machine(project: Path) -> None:
    message = error_of(project, flags={"machine": "jsc"}, environ={})
    assert "shared base" in message and "jwb" in message


def test_inheritance_cycle(project: Path) -> None:
    (project / "machines" / "jsc.yaml").write_text("inherits: jwb\n")
    assert "inheritance cycle: jwb -> jsc -> jwb" in error_of(project, flags={"machine": "jwb"}, environ={})


def test_path_that_cannot_exist(project: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = project / "machines" / "local.yaml"
    path.write_text(path.read_text().replace("~/trustllm/scratch", f"{blocker}/scratch"))
    message = error_of(project, environ={})
    assert message.startswith(f"machines/local.yaml:{line_of(path, 'scratch_root')}: cluster.scratch_root:")
    assert "is not a directory" in message


def test_relative_root_is_rejected(project: Path) -> None:
    message = error_of(project, flags={"paths.cache_dir": "cache"}, environ={})
    assert message == "flag --cache-dir: paths.cache_dir: 'cache' is not absolute"


def test_bad_slurm_time_and_partition_kind(project: Path) -> None:
    assert "not a Slurm time limit" in error_of(project, flags={"slurm.time": "20 minutes"}, environ={})
    message = error_of(project, flags={"slurm.partition": "huge"}, environ={})
    assert message.startswith("flag --partition: slurm.partition:") and "'debug'" in message


def test_invalid_yaml_and_duplicate_keys(project: Path, isolated_home: Path) -> None:
    user_file = isolated_home / ".config" / "titanenv" / "config.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("slurm:\n  nodes: [1\n")
    assert error_of(project, environ={}).startswith("~/.config/titanenv/config.yaml:")
    user_file.write_text("slurm:\n  nodes: 1\n  nodes: 2\n")
    assert error_of(project, environ={}) == (
        "~/.config/titanenv/config.yaml:3: slurm.nodes: duplicate key; YAML would silently keep only the last one"
    )


def alias_bomb(levels: int, width: int = 10) -> str:
    """A few hundred bytes of YAML standing for width**levels values ("billion laughs")."""
    lines = ["laugh0: &l0 {" + ", ".join(f"k{i}: ha" for i in range(width)) + "}"]
    for level in range(1, levels):
        lines.append(f"laugh{level}: &l{level} {{" + ", ".join(f"k{i}: *l{level - 1}" for i in range(width)) + "}")
    return "\n".join(lines) + "\n"


BOMB_LINE = 4  # where the aliases pass the bound: 10 + 110 + 1110 values before, then 11110 more


def run_bounded(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with 2 GiB of address space and a time limit: a regression fails, it does not
    take the machine's memory (expanding these files did) or hang the suite."""
    import resource

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120,
        preexec_fn=limit_memory,
    )


ALIASES_REFUSED = "YAML aliases expand to more than 10000 values beyond those written (here *l2); write the values out instead"


def test_nested_aliases_are_refused_naming_file_and_line(project: Path, isolated_home: Path) -> None:
    bomb = alias_bomb(9)  # a billion values
    assert len(bomb) < 1000
    show = [sys.executable, "-m", "invoke", "config.show", "--key", "slurm"]
    user_file = isolated_home / ".config" / "titanenv" / "config.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text(bomb)
    result = run_bounded(show, project)
    assert (result.returncode, result.stderr.strip()) == (
        1, f"error: ~/.config/titanenv/config.yaml:{BOMB_LINE}: {ALIASES_REFUSED}"
    ), result.stderr[-2000:]
    user_file.unlink()
    machine = project / "machines" / "local.yaml"
    machine.write_text(bomb + machine.read_text())
    result = run_bounded(show, project)
    assert (result.returncode, result.stderr.strip()) == (1, f"error: machines/local.yaml:{BOMB_LINE}: {ALIASES_REFUSED}")
    machine.write_text((REPO_ROOT / "machines" / "local.yaml").read_text())
    result = run_bounded(show, project, env={"INVOKE_SLURM_OPTIONS": bomb.replace("\n", ", ").join("{}")})
    assert (result.returncode, result.stderr.strip()) == (1, f"error: env INVOKE_SLURM_OPTIONS: slurm.options: {ALIASES_REFUSED}")


def test_self_containing_and_too_deep_yaml_is_one_line(project: Path) -> None:
    machine = project / "machines" / "local.yaml"
    machine.write_text("cluster: &c\n  description: *c\n")
    assert error_of(project, environ={}) == (
        "machines/local.yaml:2: alias *c is inside the node it names, a structure that contains itself"
    )
    # Past what PyYAML's recursive composer can take (a RecursionError traceback).
    machine.write_text("cluster: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error_of(project, environ={}) == "machines/local.yaml:1: nested more than 100 levels deep"


def test_ordinary_aliases_still_work(project: Path, isolated_home: Path) -> None:
    """Reusing a value is ordinary YAML; only expansion past the bound is refused."""
    user_file = isolated_home / ".config" / "titanenv" / "config.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text(
        "remote:\n  shell_setup: &setup [module load Stages/2025, module load Python]\n"
        "container:\n  options: *setup\n"
    )
    config = load_config(project, environ={})
    assert list(config.settings.container.options) == ["module load Stages/2025", "module load Python"]
    assert config.settings.remote.shell_setup == config.settings.container.options


@pytest.mark.parametrize("tool_file", ["invoke.yaml", "fabric.yaml"])
def test_invoke_and_fab_refuse_an_alias_bomb_in_their_own_files(project: Path, tool_file: str) -> None:
    """Invoke and Fabric read these themselves and expand every alias: the check runs before they do."""
    for name in ("fabfile.py", "fabric.yaml"):
        (project / name).write_text((REPO_ROOT / name).read_text())
    path = project / tool_file
    before = len(path.read_text().splitlines())
    path.write_text(path.read_text() + alias_bomb(6))
    expected = f"error: {tool_file}:{before + BOMB_LINE}: {ALIASES_REFUSED}"
    for argv in ([sys.executable, "-m", "invoke", "config.machines"], [sys.executable, "-m", "fabric", "config.machines"]):
        result = run_bounded(argv, project)
        assert (result.returncode, result.stderr.strip()) == (1, expected), argv


def test_machine_facts_are_refused_in_project_defaults(project: Path) -> None:
    path = project / "invoke.yaml"
    path.write_text(path.read_text() + "cluster:\n  gpus_per_node: 8\n")
    assert "belong in machines/*.yaml" in error_of(project, environ={})


def test_unknown_env_variable_of_a_known_section(project: Path) -> None:
    message = error_of(project, environ={"INVOKE_SLURM_NODE": "3"})
    assert message == "env INVOKE_SLURM_NODE: names no configuration key (did you mean INVOKE_SLURM_NODES?)"


def test_bad_env_value_is_one_line_from_the_cli() -> None:
    result = run_invoke("config.check", env={"INVOKE_SLURM_NODES": "x"})
    assert result.returncode == 1
    assert result.stdout.strip() == "FAIL configured machine: env INVOKE_SLURM_NODES: slurm.nodes: expected a valid integer (got 'x')"
    assert "Traceback" not in result.stderr


def test_task_error_is_one_line_on_stderr() -> None:
    result = run_invoke("config.show", "--machine", "nowhere")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: flag --machine: machine: no machine profile machines/nowhere.yaml")


# --- config tasks ------------------------------------------------------------


def test_config_show_prints_values_and_sources() -> None:
    result = run_invoke("config.show", "--machine", "jwb", env={"INVOKE_SLURM_NODES": "2"})
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if not line.startswith("#")}
    assert re.search(r"develbooster\s+# machines/jwb\.yaml:\d+$", rows["cluster.partitions.gpu.debug.partition"])
    assert re.search(r"trustllm-eu\s+# machines/jsc\.yaml:\d+$", rows["cluster.account"])
    assert re.search(r"\b2\s+# env INVOKE_SLURM_NODES$", rows["slurm.nodes"])
    assert re.search(r"jwb\s+# flag --machine$", rows["machine"])
    assert "env_x86_64" in rows["derived.venv_dir"]


def test_config_show_as_json() -> None:
    import json

    result = run_invoke("config.show", "--machine", "mn5a", "--format", "json")
    data = json.loads(result.stdout)
    assert data["cluster"]["container_binary"] == "singularity"
    assert data["derived"]["scratch_dir"].startswith("/gpfs/scratch/ehpc09/")


def test_config_check_all_profiles() -> None:
    result = run_invoke("config.check", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {line.split()[1].rstrip(":") for line in result.stdout.splitlines()} >= {"jwb", "jwc", "jrc", "jpb", "mn5a", "local"}


def test_config_check_fails_on_a_broken_profile(project: Path) -> None:
    path = project / "machines" / "jrc.yaml"
    path.write_text(path.read_text().replace("cores_per_node: 128", "cores_per_node: -1"))
    result = run_invoke("config.check", "--all", cwd=project)
    assert result.returncode == 1
    assert f"FAIL jrc: machines/jrc.yaml:{line_of(path, 'cores_per_node')}: cluster.cores_per_node:" in result.stdout


@pytest.mark.parametrize("file, before, after, key, problem", [
    ("invoke.yaml", "  env: {}\n", "  env:\n    NCCL_DEBUG: INFO\n    BAD-NAME: 1\n", "container.env.BAD-NAME",
     "'BAD-NAME' is not an environment variable name"),
    ("machines/jsc.yaml", "    env:\n", "    env:\n      '$(reboot)': x\n", "cluster.network.env.$(reboot)",
     "'$(reboot)' is not an environment variable name"),
    ("invoke.yaml", "  unset_env: [BASH_ENV,", "  unset_env: [BASH_ENV, 'X;rm',", "container.unset_env[1]",
     "'X;rm' is not a variable name (a trailing * matches a prefix)"),
    ("invoke.yaml", "  pass_env: [MASTER_ADDR,", "  pass_env: [MASTER_ADDR, '1ST*',", "container.pass_env[1]",
     "'1ST*' is not a variable name (a trailing * matches a prefix)"),
])
def test_a_bad_variable_name_names_file_line_and_key(project: Path, file: str, before: str, after: str, key: str,
                                                       problem: str) -> None:
    """A name that would reach a shell or sbatch's --export unchecked: the entry's own line and key."""
    path = project / file
    assert before in path.read_text()
    path.write_text(path.read_text().replace(before, after, 1))
    message = error_of(project, flags={"machine": "jwb"}, environ={})
    bad = problem.split("'")[1]
    assert message == f"{file}:{line_of(path, bad)}: {key}: {problem} (got {bad!r})"


@pytest.mark.parametrize("key, bad, problem", [
    ("cuda", "13", "'13' is not a CUDA release like '13.3'"),
    ("python", "3.12\\n", "'3.12\\n' is not a version like 3.12"),
    ("torch", "latest", "'latest' is not a version like 2.13.0 or 2.13.0a0+9186a08b2c.nv26.7.59513937"),
])
def test_a_bad_image_fact_names_file_line_and_key(project: Path, key: str, bad: str, problem: str) -> None:
    path = project / "invoke.yaml"
    text = path.read_text()
    start = text.index(f"{key}: ", text.index("  contents: {"))
    end = text.index(",", start) if key != "cuda" else text.index("}", start)
    path.write_text(text[:start] + f'{key}: "{bad}"' + text[end:])
    message = error_of(project, environ={})
    assert message == f"invoke.yaml:{line_of(path, '  contents: {')}: container.contents.{key}: {problem} (got {problem.split(' is not')[0]})"
