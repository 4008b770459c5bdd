"""Fixtures shared by every test: an isolated home, a copy of the project config."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

# Fixture modules of the areas that start real services (tests/fixtures/).
pytest_plugins: list[str] = ["tests.fixtures.podman", "tests.fixtures.slurm", "tests.fixtures.sshd"]

# The fixture that starts each real service, and the mark of every test that uses it
# (directly or through another fixture): `-m "not slurm"` then never starts the cluster.
SERVICE_MARKS = {"slurm_cluster": "slurm", "sshd": "sshd", "podman": "container"}


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a shell without job control (`(pytest &)`) starts
    # with Ctrl-C ignored, and every process it starts inherits that: the tests of what
    # Ctrl-C does would then fail. A handler of our own is reset to the default in children.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the services its fixtures start, before `-m` selects."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, mark in SERVICE_MARKS.items():
            if fixture in used:
                item.add_marker(mark)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $HOME and no INVOKE_* variables, so a user's own settings never leak in."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith("INVOKE_"):
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch copy of the repository's configuration, templates and tasks to edit freely."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("invoke.yaml", "tasks.py"):
        shutil.copy2(REPO_ROOT / name, root / name)
    for name in ("machines", "sbatch_templates", "tasks"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root

