"""A damaged newest checkpoint does not block the run: it resumes from the newest readable one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, run_invoke

pytestmark = pytest.mark.train

STEP = re.compile(r"(?<!validate )step:\s*(\d+)\s+loss:")


def ok(*args: str):
    result = run_invoke(*args, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def test_a_truncated_latest_checkpoint_is_skipped_kept_and_named(tmp_path: Path) -> None:
    data = tmp_path / "wiki"
    ok("data.preprocess", "--input", str(SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"), "--output", str(data))
    common = ["train.run", "--name", "damaged", "--dataset", str(data), "--batch-size", "2",
              "--checkpoint-interval", "2"]
    ok(*common, "--steps", "4", "--", "--metrics.log_freq", "1")
    folder = next(Path.home().glob("trustllm/scratch/**/experiments/damaged/checkpoint"))
    metadata = folder / "step-4" / ".metadata"
    metadata.write_bytes(metadata.read_bytes()[:20])  # truncated, as by a full disk

    # The last step's checkpoint is damaged: the run is not "done", it trains steps 3 and 4 again.
    resumed = ok(*common, "--steps", "4", "--", "--metrics.log_freq", "1")
    text = re.sub(r"\x1b\[[0-9;]*m", "", resumed.stdout + resumed.stderr)
    skipped = [line for line in text.splitlines() if "skipping checkpoint" in line]
    assert len(skipped) == 1, text[-3000:]
    assert f"skipping checkpoint {folder / 'step-4'}: its .metadata cannot be read (UnpicklingError" in skipped[0]
    assert skipped[0].endswith("resuming from step-2")
    assert "Training starts at step 3" in text
    assert [int(s) for s in STEP.findall(text)] == [3, 4]
    kept = [p for p in folder.iterdir() if p.name.startswith("damaged-at-4.")]
    assert len(kept) == 1 and (kept[0] / ".metadata").stat().st_size == 20  # moved aside, not deleted
    assert (folder / "step-4" / ".metadata").stat().st_size > 20  # saved anew, readable
