"""build -> activate -> run -> rollback with a real runtime (rootful Podman), offline parts only."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_invoke

pytestmark = pytest.mark.container

WORDS = ["a b", "it's", '"quoted"', "$HOME", "new\nline", "*", "", "--flag", "tab\there"]


class Project:
    def __init__(self, podman, root: Path) -> None:
        self.podman = podman
        self.root = root
        self.scratch = root / "scratch"
        self.user_config = root / "config.yaml"
        self.patched = root / "patched.txt"
        self.patched.write_text("patched\n")
        self.settings = {
            "cluster": {"container_runtime": "podman", "container_binary": podman.binary,
                        "project_root": str(root / "project"), "scratch_root": str(self.scratch)},
            # This sandbox caps locked memory, so memlock=-1 is left out; the flags are still real.
            "container": {"network": "none", "gpus": False, "ulimits": ["stack=67108864", "nofile=20000:20000", "nproc=32768:32768"],
                          "patched_files": [{"target": "/opt/original.txt", "source": str(self.patched)}],
                          # Variables that would break a real container; the entry must remove them.
                          "env": {"CC": "gcc", "CMAKE_BUILD_TYPE": "Debug", "BASH_ENV": "/opt/bash_env.sh",
                                  "KEEP_ME": "kept"}},
        }

    def write(self) -> None:
        self.user_config.write_text(yaml.safe_dump(self.settings))

    def invoke(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.write()
        return run_invoke(*args, env={**self.podman.env, "INVOKE_USER_CONFIG": str(self.user_config)})

    def ok(self, *args: str) -> str:
        result = self.invoke(*args)
        assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        return result.stdout

    def error(self, *args: str) -> str:
        result = self.invoke(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and lines and lines[-1].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
        return lines[-1]

    def make_venv(self) -> Path:
        env_dir = self.scratch / "trustllm" / _user() / "torchtitan" / f"env_{platform.machine()}"
        (env_dir / "bin").mkdir(parents=True)
        (env_dir / "bin" / "activate").write_text(f'export VIRTUAL_ENV="{env_dir}"\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n')
        return env_dir


def _user() -> str:
    import getpass

    return getpass.getuser()


def image_files(version: str) -> dict[str, str]:
    return {"/opt/version": f"{version}\n", "/opt/original.txt": "original\n", "/opt/bash_env.sh": "echo BASH_ENV-WAS-READ\n"}


def test_build_activate_run_rollback(podman, tmp_path: Path) -> None:
    v1 = podman.image_archive("v1", image_files("1"))
    v2 = podman.image_archive("v2", image_files("2"))
    project = Project(podman, tmp_path)
    project.settings["container"]["image"] = f"docker-archive:{v1}"
    venv = project.make_venv()

    assert "no active container" in project.error("container.run", "--", "true")
    assert "nothing to activate" in project.error("container.activate")
    assert "built" in project.ok("container.build")
    assert "already waiting" in project.error("container.build")
    assert "activated" in project.ok("container.activate")

    # Arguments arrive exactly as given.
    out = project.ok("container.run", "--", "bash", "-c", 'printf "<%s>\\n" "$@"', "argv0", *WORDS)
    assert out == "".join(f"<{w}>\n" for w in WORDS)
    # Host-breaking variables removed, caches + HF offline set, venv active, patched file bound.
    out = project.ok("container.run", "--", "bash", "-c",
                     'echo "${CC-unset} ${CMAKE_BUILD_TYPE-unset} ${BASH_ENV-unset} $KEEP_ME $HF_HUB_OFFLINE '
                     '$PIP_CACHE_DIR $VIRTUAL_ENV"; cat /opt/original.txt /opt/version')
    cache = project.scratch / "trustllm" / _user() / "torchtitan" / ".cache"
    assert out == f"unset unset unset kept 1 {cache}/pip {venv}\npatched\n1\n"
    assert project.invoke("container.run", "--", "sh", "-c", "exit 7").returncode == 7

    # A new image: built beside the active one, then activated; the old one is kept.
    project.settings["container"]["image"] = f"docker-archive:{v2}"
    project.ok("container.build")
    assert project.ok("container.run", "--", "cat", "/opt/version") == "1\n"
    project.ok("container.activate")
    assert project.ok("container.run", "--", "cat", "/opt/version") == "2\n"
    status = project.ok("container.status")
    assert "active   present" in status and "previous present" in status and "build    -" in status
    project.ok("container.activate", "--rollback")
    assert project.ok("container.run", "--", "cat", "/opt/version") == "1\n"
    project.ok("container.activate", "--rollback")
    assert project.ok("container.run", "--", "cat", "/opt/version") == "2\n"

    # A recorded digest that does not match: refused, nothing left at the build name.
    project.settings["container"]["image"] = f"docker-archive:{v1}"
    project.settings["container"]["image_digest"] = "sha256:" + "0" * 64
    assert "container.image_digest" in project.error("container.build")
    assert "build    -" in project.ok("container.status")
    project.settings["container"]["image_digest"] = ""


def test_offline_build_and_full_disk_leave_the_active_container(podman, tmp_path: Path) -> None:
    v3 = podman.image_archive("v3", image_files("3"))
    project = Project(podman, tmp_path)
    project.settings["container"]["image"] = f"docker-archive:{v3}"
    project.settings["container"]["patched_files"] = []
    project.settings["container"]["name"] = "offline"
    project.make_venv()

    line = project.error("container.build", "--offline")
    assert "no offline container archive: expected" in line and "containers/offline_image.tar_" in line
    assert "container.download" in line
    out = project.ok("container.download")
    archive = Path(out.split("saved ", 1)[1].split(" ", 1)[0])
    assert archive.is_file() and archive.with_name(archive.name + ".sha256").is_file()
    project.ok("container.build", "--offline")
    project.ok("container.activate")
    assert project.ok("container.run", "--", "cat", "/opt/version") == "3\n"

    # A corrupted archive is refused before anything is loaded.
    data = archive.read_bytes()
    archive.write_bytes(data[:-10] + b"0123456789")
    assert "does not match its checksum" in project.error("container.build", "--offline")
    archive.write_bytes(data)

    # Podman's storage on a small file system: room for the active image, not for a second one.
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(small)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        storage = small / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{small}/graph"\nrunroot = "{small}/run"\n')
        project.podman = type(podman)(podman.binary, {**podman.env, "CONTAINERS_STORAGE_CONF": str(storage)}, podman.root)
        project.ok("container.build", "--offline")
        project.ok("container.activate")
        v4 = podman.image_archive("v4", {**image_files("4"), "/opt/ballast": "x" * 3_000_000})
        project.settings["container"]["image"] = f"docker-archive:{v4}"
        project.podman = podman
        project.ok("container.download", "--force")
        project.podman = type(podman)(podman.binary, {**podman.env, "CONTAINERS_STORAGE_CONF": str(storage)}, podman.root)
        active_before = next(l for l in project.ok("container.status").splitlines() if l.startswith("active"))
        line = project.error("container.build", "--offline")
        assert "no space left on device" in line and "is untouched" in line
        # The active image is still there, the same one (vfs has no room left to start a container here).
        status = project.ok("container.status").splitlines()
        assert active_before in status and any(l.startswith("build    -") for l in status)
    finally:
        subprocess.run(["umount", str(small)], check=True)
