"""What a job records about itself: run directory, container image and digest, checkouts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from titanenv.runs import read_ran, ran_path
from titanenv.train import provenance


def test_the_run_directory_follows_from_the_resolved_toml(tmp_path: Path) -> None:
    assert provenance.run_dir_of(tmp_path / "run1" / "train.toml") == tmp_path / "run1"  # train.run
    assert provenance.run_dir_of(tmp_path / "20260101-000000-abcdef.train.toml") == tmp_path / "20260101-000000-abcdef"


def test_an_apptainer_image_is_recorded_with_the_digest_its_build_wrote(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "torchtitan_x86_64.active.sif"
    image.write_bytes(b"sif")
    image.with_name(image.name + ".json").write_text(json.dumps({"digest": "sha256:abc"}))
    monkeypatch.setenv("APPTAINER_CONTAINER", str(image))
    assert provenance.collect()["container"] == {"runtime": "apptainer", "image": str(image), "digest": "sha256:abc"}
    image.with_name(image.name + ".json").unlink()
    assert provenance.collect()["container"]["digest"] is None


def test_a_package_in_a_venv_inside_a_checkout_is_not_that_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "repo"
    package = checkout / ".venv" / "lib" / "site-packages" / "pkg"
    package.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    assert provenance._checkout_commit(package) == {"checkout": None, "commit": None}
    editable = checkout / "pkg"
    editable.mkdir()
    (editable / "__init__.py").write_text("")
    subprocess.run(["git", "-C", str(checkout), "add", "pkg"], check=True)
    subprocess.run(["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert provenance._checkout_commit(editable)["commit"] == head.strip()


def test_records_are_read_back_by_job_and_a_damaged_one_says_so(tmp_path: Path) -> None:
    ran_path(tmp_path, "812").write_text(json.dumps({"slurm_job_id": "812"}))
    ran_path(tmp_path, None).write_text("{trunc")
    found = read_ran(tmp_path)
    assert found["812"] == {"slurm_job_id": "812"}
    assert found[""]["error"].startswith(str(ran_path(tmp_path, None)))
