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


def held_out_dataset() -> Path:
    """The sample corpus's validation part as GPT-2 tokens, made once (as `invoke pipeline` makes it).

    debug_cpu.toml validates on ``{data_valid_output}``: trainings in tests
    that are not about validation point it here (:func:`valid_env`).
    """
    from titanenv.data import preprocess as pre
    from titanenv.data.indexed import idx_path

    prefix = REPO_ROOT / ".work" / "datasets" / "openwebtext-valid-gpt2"
    if not idx_path(prefix).is_file():
        plan = pre.prepare([str(REPO_ROOT / "sample_data" / "corpus" / "openwebtext" / "valid.jsonl.zst")],
                           base=REPO_ROOT, tokenizer=str(REPO_ROOT / "sample_data" / "tokenizers" / "gpt2"),
                           output=prefix, overwrite=True)
        pre.run(plan, workers=1)
    return prefix


def valid_env() -> dict[str, str]:
    """INVOKE_* setting data.valid_output to :func:`held_out_dataset` (what the recipe's validator reads)."""
    return {"INVOKE_DATA_VALID_OUTPUT": str(held_out_dataset())}


def run_invoke(*args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run this project's `invoke` as a user would, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
