"""The exact command lines of every runtime on every machine profile, and the module prelude."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, run_invoke
from titanenv import container
from titanenv.config import known_machines, load_config
from titanenv.container.host import HostShell, RuntimeNotFound
from titanenv.launch import job_launcher

ENTRY_SCRIPT = (
    'for __v in $(compgen -v); do case "$__v" in BASH_ENV|CC|CFLAGS|CMAKE_*|CPATH|CXX|CXXFLAGS|LESSOPEN|PYTHONPATH|'
    'PYTORCH_BUILD_*|PYTORCH_HOME|PYTORCH_VERSION) unset "$__v" 2>/dev/null ;; esac; done; unset __v; '
    'if [ -e /usr/local/cuda/lib64/stubs/libcuda.so ]; then export TRITON_LIBCUDA_PATH=/usr/local/cuda/lib64/stubs; fi; '
    'if [ ! -r "$0" ]; then echo "error: no venv at '
    '${0%/bin/activate} (inside the container); run: invoke env.setup" >&2; exit 1; fi; source "$0"; exec "$@"'
)
# machine -> (binary, image file, venv) as the profiles and invoke.yaml define them.
APPTAINER_MACHINES = {
    "jwb": ("apptainer", "/p/scratch/trustllm-eu/{u}/torchtitan/containers/torchtitan_pytorch_26.07-py3_x86_64.sif",
            "/p/scratch/trustllm-eu/{u}/torchtitan/env_x86_64"),
    "jwc": ("apptainer", "/p/scratch/trustllm-eu/{u}/torchtitan/containers/torchtitan_pytorch_26.07-py3_x86_64.sif",
            "/p/scratch/trustllm-eu/{u}/torchtitan/env_x86_64"),
    "jrc": ("apptainer", "/p/scratch/trustllm-eu/{u}/torchtitan/containers/torchtitan_pytorch_26.07-py3_x86_64.sif",
            "/p/scratch/trustllm-eu/{u}/torchtitan/env_x86_64"),
    "jpb": ("apptainer", "/p/scratch/trustllm-eu/{u}/torchtitan/containers/torchtitan_pytorch_26.07-py3_aarch64.sif",
            "/p/scratch/trustllm-eu/{u}/torchtitan/env_aarch64"),
    "mn5a": ("singularity", "/gpfs/scratch/ehpc09/{u}/torchtitan/containers/torchtitan_pytorch_26.07-py3_x86_64.sif",
             "/gpfs/scratch/ehpc09/{u}/torchtitan/env_x86_64"),
}


def config(machine: str, **flags):
    return load_config(REPO_ROOT, flags={"machine": machine, "user": "alice", **flags}, environ={})


def test_every_machine_profile_is_covered() -> None:
    assert set(known_machines(REPO_ROOT)) == set(APPTAINER_MACHINES) | {"local"}


@pytest.mark.parametrize("machine", sorted(APPTAINER_MACHINES))
def test_apptainer_and_singularity_job_prefix(machine: str) -> None:
    binary, image, venv = (v.format(u="alice") for v in APPTAINER_MACHINES[machine])
    expected = [binary, "exec", "--nv", image, "env", "-u", "BASH_ENV", "bash", "--noprofile", "--norc", "-c",
                ENTRY_SCRIPT, f"{venv}/bin/activate"]
    assert job_launcher(config(machine)) == expected


@pytest.mark.parametrize("machine", sorted(APPTAINER_MACHINES))
def test_apptainer_run_binds_patched_files_and_pulls_the_pinned_image(machine: str, tmp_path: Path) -> None:
    binary, image, venv = (v.format(u="alice") for v in APPTAINER_MACHINES[machine])
    patch = tmp_path / "patched.py"
    patch.write_text("# patched\n")
    cfg = config(machine, **{"container.patched_files": [{"target": "/usr/lib/x.py", "source": str(patch)}],
                             "container.binds": ["/data:/data:ro"]})
    host_env = {"PATH": "/usr/bin", "CC": "gcc", "CMAKE_PREFIX_PATH": "/x", "PYTHONPATH": "/y", "KEEP": "1"}
    invocation = container.run_invocation(cfg, ["python", "-c", "print('a b')"], base_env=host_env)
    assert invocation.argv == [
        binary, "exec", "--nv", "--bind", f"{patch}:/usr/lib/x.py:ro", "--bind", "/data:/data:ro", image,
        "env", "-u", "BASH_ENV", "bash", "--noprofile", "--norc", "-c", ENTRY_SCRIPT, f"{venv}/bin/activate",
        "python", "-c", "print('a b')",
    ]
    # Apptainer inherits the host's environment: it is cleaned and completed there.
    env = invocation.env
    assert "CC" not in env and "CMAKE_PREFIX_PATH" not in env and "PYTHONPATH" not in env and env["KEEP"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].endswith("/.cache/huggingface")
    store = container.images(cfg)
    assert store.runtime.pull_argv(cfg.settings.container.image, "/b/x.sif") == [
        binary, "pull", "--force", "/b/x.sif", "docker://nvcr.io/nvidia/pytorch:26.07-py3"]
    assert store.runtime.build_from_archive_argv("/o/x.tar", "/b/x.sif") == [
        binary, "build", "--force", "/b/x.sif", "docker-archive:///o/x.tar"]
    assert store.layout.file("build").parent == cfg.paths.container_build_dir
    assert store.layout.file("active") == Path(image)


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_docker_and_podman_command_lines(runtime: str, tmp_path: Path) -> None:
    home = Path.home()
    cfg = config("local", **{"cluster.container_runtime": runtime, "cluster.container_binary": runtime,
                             "cluster.scratch_root": str(tmp_path / "s"), "cluster.project_root": str(tmp_path / "p")})
    (tmp_path / "s").mkdir()
    gpu = ["--gpus", "all"] if runtime == "docker" else ["--device", "nvidia.com/gpu=all"]
    invocation = container.run_invocation(cfg, ["echo", "$HOME"], base_env={"PATH": "/usr/bin"}, cwd=str(REPO_ROOT))
    argv = invocation.argv
    image = "torchtitan_pytorch_26.07-py3_x86_64:active" if cfg.arch == "x86_64" else f"torchtitan_pytorch_26.07-py3_{cfg.arch}:active"
    head = [runtime, "run", "--rm", "--network", "host", "--ipc", "host", "--ulimit", "memlock=-1",
            "--ulimit", "stack=67108864", *gpu]
    assert argv[: len(head)] == head
    rest = argv[len(head):]
    if os.getuid() != 0:
        user = ["--user", f"{os.getuid()}:{os.getgid()}"] if runtime == "docker" else ["--userns", "keep-id"]
        assert rest[:2] == user
        rest = rest[2:]
    assert rest[:2] == ["--workdir", str(REPO_ROOT)]
    volumes = [rest[i + 1] for i, word in enumerate(rest) if word == "--volume"]
    assert volumes == [f"{home}:{home}", f"{REPO_ROOT}:{REPO_ROOT}"]
    envs = [rest[i + 1] for i, word in enumerate(rest) if word == "--env"]
    assert "HF_HUB_OFFLINE=1" in envs and f"PIP_CACHE_DIR={cfg.paths.cache_dir}/pip" in envs
    assert argv[argv.index(image) + 1:] == ["env", "-u", "BASH_ENV", "bash", "--noprofile", "--norc", "-c",
                                            ENTRY_SCRIPT, f"{cfg.paths.venv_dir}/bin/activate", "echo", "$HOME"]
    # Job steps pass the job's variables by name.
    prefix = job_launcher(cfg)
    assert ["--env", "MASTER_ADDR"] == prefix[prefix.index("MASTER_ADDR") - 1: prefix.index("MASTER_ADDR") + 1]
    store = container.images(cfg)
    assert store.runtime.pull_argv(cfg.settings.container.image) == (
        [runtime, "pull", "--quiet", "nvcr.io/nvidia/pytorch:26.07-py3"] if runtime == "docker"
        else [runtime, "pull", "--quiet", "docker://nvcr.io/nvidia/pytorch:26.07-py3"])
    assert store.runtime.save_argv("x", "/o/a.tar") == [runtime, "save", "--output", "/o/a.tar", "x"]
    assert store.runtime.load_argv("/o/a.tar") == [runtime, "load", "--input", "/o/a.tar"]


def test_runtime_none_runs_in_the_host_venv() -> None:
    cfg = config("local")
    assert job_launcher(cfg) == []
    invocation = container.run_invocation(cfg, ["python", "x y"], base_env={"CXX": "g++", "PATH": "/bin"})
    assert invocation.argv[-3:] == [f"{cfg.paths.venv_dir}/bin/activate", "python", "x y"]
    assert "CXX" not in invocation.env


def test_entry_keeps_arguments_exact_and_removes_host_variables(tmp_path: Path) -> None:
    """The wrapper every runtime runs, run for real by bash on this host."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV="{venv}"\n')
    bash_env = tmp_path / "bash_env.sh"
    bash_env.write_text("echo BASH_ENV-WAS-READ\n")
    words = ["a b", "it's", '"q"', "$HOME", "new\nline", "*", "", "-c"]
    argv = container.venv_entry(["printf", "<%s>\\n", *words], unset=["BASH_ENV", "CC", "CMAKE_*"], activate=str(venv / "bin" / "activate"))
    env = {"PATH": os.environ["PATH"], "BASH_ENV": str(bash_env), "CC": "gcc", "CMAKE_X": "1", "KEEP": "k"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    assert out == "".join(f"<{w}>\n" for w in words)
    check = container.venv_entry(["bash", "-c", 'echo "${CC-unset} ${CMAKE_X-unset} $KEEP $VIRTUAL_ENV"'],
                                 unset=["BASH_ENV", "CC", "CMAKE_*"], activate=str(venv / "bin" / "activate"))
    assert subprocess.run(check, env=env, capture_output=True, text=True).stdout == f"unset unset k {venv}\n"
    missing = container.venv_entry(["true"], unset=[], activate=str(tmp_path / "nope" / "bin" / "activate"))
    done = subprocess.run(missing, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "no venv at" in done.stderr and "invoke env.setup" in done.stderr


def _fake_module_env(tmp_path: Path, provides: str | None) -> dict[str, str]:
    """An exported bash `module` function, as Lmod sets it, whose `load X` adds a bin dir for X."""
    bindir = tmp_path / "modules"
    bindir.mkdir(exist_ok=True)
    if provides:
        tool = bindir / provides
        tool.write_text("#!/bin/sh\necho fake-runtime \"$@\"\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "module.log"
    body = (f'() {{ echo "$*" >> {log}; case "$1" in load|try-load) '
            f'if [ "$2" = Apptainer-Tools ] || [ "$2" = singularity ]; then PATH="{bindir}:$PATH"; fi;; esac; }}')
    return {"PATH": "/usr/bin:/bin", "BASH_FUNC_module%%": body, "HOME": str(tmp_path)}


def test_module_prelude_loads_the_runtime_then_runs(tmp_path: Path) -> None:
    cfg = config("jwb")
    shell = container.host_shell(cfg)
    env = _fake_module_env(tmp_path, "apptainer")
    shell.check(env)
    assert shell.run(["apptainer", "--version"], env=env, capture=True) == "fake-runtime --version\n"
    log = (tmp_path / "module.log").read_text().splitlines()
    assert log[:3] == ["purge", "load Stages/2025 GCC", "try-load Apptainer-Tools"]


def test_missing_runtime_binary_names_the_machine_modules(tmp_path: Path) -> None:
    shell = container.host_shell(config("jwb"))
    with pytest.raises(RuntimeNotFound) as caught:
        shell.check(_fake_module_env(tmp_path, None))
    message = str(caught.value)
    assert "binary 'apptainer'" in message and "not found on jwb" in message
    assert "module purge; module load Stages/2025 GCC; module try-load Apptainer-Tools" in message
    assert "machines/jsc.yaml" in message
    bsc = container.host_shell(config("mn5a"))
    with pytest.raises(RuntimeNotFound, match="module load gcc; module try-load singularity"):
        bsc.check(_fake_module_env(tmp_path, None))
    local = HostShell(machine="local", runtime="podman", binary="podman-not-installed")
    with pytest.raises(RuntimeNotFound, match="apt install podman"):
        local.check({"PATH": "/nonexistent"})


def test_bad_runtime_input_is_one_line(tmp_path: Path) -> None:
    result = run_invoke("container.build", "--runtime", "rkt")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "container_runtime" in result.stderr and "rkt" in result.stderr
    result = run_invoke("container.build", "--machine", "jwb", env={"PATH": "/usr/bin:/bin"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: container runtime 'apptainer'") and "module try-load Apptainer-Tools" in lines[0]



def test_container_steps_have_nothing_to_do_with_runtime_none() -> None:
    """A CI chain's container steps pass on a machine without containers, and say why."""
    for task in ("container.download", "container.build", "container.activate", "container.status"):
        args = [task, "--runtime", "none"] + (["--offline"] if task == "container.build" else [])
        result = run_invoke(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("runtime none on machine local: no container to "), result.stdout
        assert "jobs run in the host venv" in result.stdout


def test_sbatch_scripts_with_container_prefix_stay_valid() -> None:
    """The prefix is rendered into job scripts with qjoin; bash parses it back to the same words."""
    from titanenv import sbatch

    for machine in APPTAINER_MACHINES:
        cfg = config(machine)
        script = sbatch.preprocess_script(cfg, run_dir=Path("/r"), command=["python", "-m", "x"])
        line = next(l for l in script.splitlines() if l.startswith("srun "))
        words = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + line.removeprefix("srun ")],
                               capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
        assert words == [*job_launcher(cfg), "python", "-m", "x"]
