"""The rendered sbatch script of every template on every machine, compared with a golden file.

``tests/golden/<template>/<machine>.sbatch`` holds what the template renders
for that machine's profile with fixed inputs (run directory, home, user, CPU
architecture, cores), so a change to a template, a profile or the rendering
code shows up as a diff to review. The repository's path and this Python's
path stand as ``<repo>`` and ``<python>``, so the files do not depend on
where the checkout lies.

To re-record after an intended change, and review the diff:

    TITANENV_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
    git diff tests/golden/
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from titanenv import sbatch
from titanenv.config import known_machines, load_config

GOLDEN_DIR = Path(__file__).with_name("golden")
RECORD = os.environ.get("TITANENV_RECORD_GOLDEN") == "1"
RUN_DIR = Path("/golden/runs/job/20250101-000000-abcdef")
COMMAND = ["python", "-m", "titanenv.example", "--flag", "a value"]
# Everything the profiles leave to this host, fixed.
FIXED = {"user": "golden", "cluster.cpu_arch": "x86_64", "cluster.cores_per_node": 8}


def render(template: str, machine: str) -> str:
    config = load_config(REPO_ROOT, flags={**FIXED, "machine": machine}, environ={})
    scripts = {
        "preprocess": lambda: sbatch.preprocess_script(config, run_dir=RUN_DIR, command=COMMAND),
        "preprocess_parallel": lambda: sbatch.preprocess_parallel_script(config, run_dir=RUN_DIR, command=COMMAND),
        "train": lambda: sbatch.train_script(config, run_dir=RUN_DIR, command=COMMAND),
        "export": lambda: sbatch.export_script(config, run_dir=RUN_DIR, command=COMMAND),
    }
    text = scripts[template]()
    return text.replace(sys.executable, "<python>").replace(str(REPO_ROOT), "<repo>")


def test_every_template_has_golden_files() -> None:
    on_disk = {name.removesuffix(".sbatch.j2") for name in sbatch.TEMPLATES}
    assert on_disk == {"preprocess", "preprocess_parallel", "train", "export"}


@pytest.mark.parametrize("machine", known_machines(REPO_ROOT))
@pytest.mark.parametrize("template", ["preprocess", "preprocess_parallel", "train", "export"])
def test_rendered_script_matches_golden_file(template: str, machine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/golden/home")
    text = render(template, machine)
    golden = GOLDEN_DIR / template / f"{machine}.sbatch"
    if RECORD:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"no {golden.relative_to(REPO_ROOT)}; record it: TITANENV_RECORD_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(encoding="utf-8"), (
        f"{golden.relative_to(REPO_ROOT)} differs; if the change is intended, re-record "
        f"(TITANENV_RECORD_GOLDEN=1 pytest tests/test_golden.py) and review git diff tests/golden/"
    )
