"""The main job, `invoke pipeline`, as the README's first command runs it: both splits, training, and after."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import run_invoke

pytestmark = pytest.mark.train


def test_the_main_job_shows_validation_export_sample_and_where_everything_is(isolated_home: Path) -> None:
    result = run_invoke("pipeline", env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout=900)
    out = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert result.returncode == 0, out[-4000:]
    scratch = next(isolated_home.glob("trustllm/scratch/**/torchtitan"))
    data = scratch / "data" / "openwebtext_gpt2"
    summary = out[out.index("== done in "):]
    rows = dict(re.findall(r"(?m)^(training data|validation data|checkpoints|validation loss|export|report)\s+(.*)$",
                           summary))
    assert rows["training data"] == f"{data / 'train'}.bin/.idx (950 documents, 1,010,521 tokens)"
    assert rows["validation data"] == f"{data / 'valid'}.bin/.idx (50 documents, 44,478 tokens)"

    # Validation at step 1 and every 20 steps, as TorchTitan printed it and as the summary says.
    printed = {int(s): float(v) for s, v in re.findall(r"validate step:\s*(\d+)\s+loss:\s*([0-9.]+)", out)}
    assert sorted(printed) == [1, 20, 40]
    assert rows["validation loss"] == ", ".join(f"{printed[s]:.4f} (step {s})" for s in (1, 20, 40))
    assert printed[40] < printed[1]

    export = scratch / "experiments" / "debug_cpu" / "hf" / "step-40"
    assert rows["export"].startswith(f"{export} ") and (export / "model.safetensors").is_file()
    assert json.loads((export / "config.json").read_text())["model_type"] == "llama"
    assert rows["checkpoints"].startswith(f"{scratch / 'experiments' / 'debug_cpu' / 'checkpoint'} (latest step-40")
    figure = Path(rows["report"].split(" (")[0])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sample = out[out.index("== sample ==") :].splitlines()
    assert sample[1] == "# greedy, 40 new token(s)" and sample[2].startswith("The history of")
    assert "next:" in summary and "invoke data.split" in summary

    # Again: everything is kept, nothing trained twice.
    again = run_invoke("pipeline", env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout=900)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text[-4000:]
    assert text.count("exists; keeping it") == 3 and "nothing to train" in text
    assert "validation loss  " + rows["validation loss"] in text
