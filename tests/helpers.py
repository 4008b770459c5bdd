"""Plain helpers for tests (fixtures live in conftest.py and tests/fixtures/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from titanenv.sample_data import materialize

REPO_ROOT = Path(__file__).resolve().parent.parent
# The repository's sample corpus and tokenizers as plain files (sample_data/README.md).
SHARED_DATA = materialize(REPO_ROOT / ".work" / "sample-data")


def run_invoke(*args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run this project's `invoke` as a user would, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
