"""Local git repositories and wheels that stand in for GitHub and PyPI in the env tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.env import tiny_backend

BACKEND = Path(tiny_backend.__file__)
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}


def git(repo: Path, *args: str) -> str:
    import os

    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout.strip()


def write_version(repo: Path, name: str, version: str, deps: list[str]) -> None:
    package = name.replace("-", "_")
    deps_toml = ", ".join(f'"{d}"' for d in deps)
    (repo / "pyproject.toml").write_text(
        "[build-system]\nrequires = []\nbuild-backend = \"_backend\"\nbackend-path = [\".\"]\n\n"
        f"[project]\nname = \"{name}\"\nversion = \"{version}\"\ndependencies = [{deps_toml}]\n"
    )
    (repo / package).mkdir(exist_ok=True)
    (repo / package / "__init__.py").write_text(f'VERSION = "{version}"\n')


def make_repo(path: Path, name: str, version: str = "1.0", deps: list[str] | None = None) -> Path:
    """A git repository of an installable package, tagged v<version>, on branch main."""
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    shutil.copy(BACKEND, path / "_backend.py")
    write_version(path, name, version, deps or [])
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", f"{name} {version}")
    git(path, "tag", f"v{version}")
    return path


def release(path: Path, name: str, version: str, deps: list[str] | None = None) -> str:
    """Commit and tag a new version; return its commit."""
    write_version(path, name, version, deps or [])
    git(path, "commit", "--quiet", "-am", f"{name} {version}")
    git(path, "tag", f"v{version}")
    return git(path, "rev-parse", "HEAD")


def repack_installed(name: str, directory: Path) -> str:
    """Write a wheel of a distribution installed in the running Python (pure-Python ones only).

    Stands in for downloading it from PyPI: the set-up test needs a modern
    setuptools in its wheel index to build this project without network.
    """
    import zipfile
    from importlib import metadata

    dist = metadata.distribution(name)
    version = dist.version
    filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(directory / filename, "w", zipfile.ZIP_DEFLATED) as whl:
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file)))
            if path.is_file() and "__pycache__" not in file.parts and not str(file).startswith(".."):
                whl.write(path, str(file))
    return filename
