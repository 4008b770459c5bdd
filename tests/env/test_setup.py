"""env.setup, --update, download, --offline and verify-bundle, for real with runtime none.

Local git repositories (made here) stand in for GitHub and a wheel directory
for PyPI; the offline case runs with the sources gone, an unreachable proxy
and PIP_NO_INDEX, so any network use would fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.env.repos import git, release, repack_installed
from tests.helpers import REPO_ROOT, World, error_line, ok


@pytest.fixture(autouse=True)
def clean_pip_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's pip configuration (extra indexes, constraints) must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_setup_clones_pins_installs_editable_and_records(world: World) -> None:
    # This project too, editable, so job steps can run `python -m titanenv...` in the venv.
    # Its dependencies would come from PyPI: left out here. It builds with the
    # setuptools that build_packages installs (from the local index, as offline).
    repack_installed("setuptools", world.wheels)
    world.settings["env"]["build_packages"] = ["setuptools>=70.1"]  # has bdist_wheel built in
    world.settings["env"]["project"] = {"install": True, "pip_args": ["--no-deps", "--no-build-isolation"]}
    world.write()
    out = ok(world.invoke("env.setup"))
    assert "alpha: cloned at v1.0" in out
    # Editable: the venv imports the clones themselves.
    assert world.python("import alpha; print(alpha.__file__)") == str(world.repos / "alpha" / "alpha" / "__init__.py")
    assert world.python("import beta; print(beta.VERSION)") == "1.1"
    assert world.python("import tinydep, tinyextra; print(tinydep.VALUE, tinyextra.NAME)") == "42 extra"
    assert world.python("import titanenv; print(titanenv.__file__)") == str(REPO_ROOT / "titanenv" / "__init__.py")
    # --system-site-packages, as in the original.
    assert "include-system-site-packages = true" in (world.venv / "pyvenv.cfg").read_text()
    record = json.loads(world.venv.with_name(world.venv.name + ".installed.json").read_text())
    commits = {repo["name"]: repo["commit"] for repo in record["repos"]}
    assert commits["alpha"] == git(world.alpha, "rev-parse", "v1.0^{commit}")
    assert commits["beta"] == git(world.beta_fork, "rev-parse", "ours")
    assert "tinyextra==2.0" in record["pip_freeze"]
    assert any(line.startswith("-e ") or "alpha" in line for line in record["pip_freeze"])


def test_fork_switches_origin_and_keeps_the_old_one(world: World) -> None:
    # A clone made when the configuration still pointed upstream.
    world.repos.mkdir(parents=True)
    clone = world.repos / "beta"
    subprocess.run(["git", "clone", "--quiet", str(world.beta_upstream), str(clone)], check=True)
    before = git(clone, "rev-parse", "HEAD")
    out = ok(world.invoke("env.setup"))
    assert "origin is now the fork" in out
    assert git(clone, "remote", "get-url", "origin") == str(world.beta_fork)
    assert git(clone, "remote", "get-url", "prev-origin") == str(world.beta_upstream)
    # Never moved silently: still where the user left it, and set-up says so.
    assert git(clone, "rev-parse", "HEAD") == before
    assert "left as it is" in out


def test_update_moves_to_new_pin_and_reapplies_local_changes(world: World) -> None:
    ok(world.invoke("env.setup"))
    clone = world.repos / "alpha"
    new_commit = release(world.alpha, "alpha", "2.0", deps=["tinydep"])
    (clone / "NOTES.txt").write_text("tracked later\n")
    (clone / "_backend.py").write_text((clone / "_backend.py").read_text() + "\n# my local change\n")
    world.settings["env"]["repos"][0]["ref"] = "v2.0"
    world.write()
    out = ok(world.invoke("env.setup"))
    assert "not the pin v2.0; left as it is" in out
    assert world.python("import alpha; print(alpha.VERSION)") == "1.0"
    out = ok(world.invoke("env.setup", "--update"))
    assert "stashed local changes" in out and "re-applied local changes" in out
    assert git(clone, "rev-parse", "HEAD") == new_commit
    assert "# my local change" in (clone / "_backend.py").read_text()
    assert world.python("import alpha; print(alpha.VERSION)") == "2.0"


def test_update_stops_on_conflicting_local_changes(world: World) -> None:
    ok(world.invoke("env.setup"))
    clone = world.repos / "alpha"
    release(world.alpha, "alpha", "2.0", deps=["tinydep"])
    (clone / "alpha" / "__init__.py").write_text('VERSION = "mine"\n')
    world.settings["env"]["repos"][0]["ref"] = "v2.0"
    world.write()
    line = error_line(world.invoke("env.setup", "--update"))
    assert "alpha: your local changes conflict with v2.0" in line and "git stash drop" in line
    # The changes are not lost: they are in the stash.
    assert "titanenv env.setup --update" in git(clone, "stash", "list")


def test_a_pin_that_does_not_exist_is_one_line_and_leaves_nothing(world: World) -> None:
    world.settings["env"]["repos"][0]["ref"] = "v9.9"
    world.write()
    line = error_line(world.invoke("env.setup"))
    assert "env.repos[alpha].ref 'v9.9' does not exist in" in line
    assert not (world.repos / "alpha").exists()
    assert [p.name for p in world.repos.iterdir()] == []


def test_download_then_offline_setup_without_network(world: World, tmp_path: Path) -> None:
    ok(world.invoke("env.setup"))
    out = ok(world.invoke("env.download"))
    bundle = world.scratch / "offline" / "env"
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert {"repos/alpha.bundle", "repos/beta.bundle"} <= set(manifest["files"])
    assert any(name.startswith("wheels/tinydep-1.0") for name in manifest["files"])
    assert manifest["repos"]["beta"]["ref"] == "ours"
    subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=bundle, check=True)
    assert "files match MANIFEST.json" in ok(world.invoke("env.verify-bundle"))

    # A fresh machine: only the bundle survives; the sources and the wheel index are gone.
    shutil.rmtree(world.repos)
    shutil.rmtree(world.venv)
    shutil.rmtree(world.sources)
    shutil.rmtree(world.wheels)
    world.settings["env"]["pip_args"] = []
    world.write()
    no_network = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                  "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "PIP_NO_INDEX": "1"}
    out = ok(world.invoke("env.setup", "--offline", env=no_network))
    assert "files verified" in out
    assert world.python("import alpha, beta, tinyextra; print(alpha.VERSION, beta.VERSION)") == "1.0 1.1"
    # The clones point at the real origins again, not at the bundle.
    assert git(world.repos / "alpha", "remote", "get-url", "origin") == str(world.alpha)
    record = json.loads(world.venv.with_name(world.venv.name + ".installed.json").read_text())
    assert record["offline"] is True


def test_offline_fails_clearly_on_missing_or_incomplete_bundle(world: World) -> None:
    line = error_line(world.invoke("env.setup", "--offline"))
    assert "no offline bundle at" in line and "env.download" in line
    line = error_line(world.invoke("env.verify-bundle"))
    assert "no offline bundle at" in line
    ok(world.invoke("env.setup"))
    ok(world.invoke("env.download"))
    bundle = world.scratch / "offline" / "env"
    wheel = next((bundle / "wheels").glob("tinyextra*"))
    wheel.write_bytes(wheel.read_bytes() + b"corrupt")
    line = error_line(world.invoke("env.verify-bundle"))
    assert f"wheels/{wheel.name} does not match its checksum" in line
    wheel.unlink()
    line = error_line(world.invoke("env.setup", "--offline"))
    assert f"wheels/{wheel.name} is missing" in line
