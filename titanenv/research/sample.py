"""Text generated from a checkpoint or an exported Hugging Face directory.

One generation path: transformers' ``generate`` on a HF directory. A
checkpoint is first exported (float32) to a temporary directory with the
same code as ``research.export``, so what is sampled from a checkpoint is what
its export would give, and greedy decoding from either is the same text.
Greedy (``temperature`` 0) is deterministic; sampling draws from the
temperature-scaled distribution (no top-k / top-p cut) with a seeded
generator, so a seed repeats its text.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from titanenv.research.experiment import ResearchError


@dataclass(frozen=True)
class Sample:
    prompt: str
    text: str  # the new text only
    new_ids: list[int]
    mode: str  # "greedy" or "temperature T, seed S"


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ResearchError(f"--device {device}: this machine has no CUDA GPU (use cpu)")
    if device != "cpu" and not device.startswith("cuda"):
        raise ResearchError(f"--device {device!r}: choose cpu, cuda, cuda:N or auto")
    return device


@contextlib.contextmanager
def exported_checkpoint(request) -> Iterator[Path]:
    """A float32 export of the checkpoint of ``request`` (an ExportRequest) in a temporary directory."""
    import dataclasses

    from titanenv.research.export import export

    with tempfile.TemporaryDirectory(prefix="titanenv-sample-") as scratch:
        output = Path(scratch) / "hf"
        yield export(dataclasses.replace(request, output=output, dtype="float32", overwrite=False),
                     echo=lambda _line: None)


def load_hf(directory: Path, device: str = "cpu"):
    """``(model, tokenizer)`` from an exported directory, offline."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not (directory / "config.json").is_file():
        raise ResearchError(f"{directory}: no config.json here; give a directory written by research.export")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForCausalLM.from_pretrained(str(directory)).to(device)
    model.eval()
    return model, tokenizer


def generate(directory: Path, prompt: str, *, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
             device: str = "cpu") -> Sample:
    """Text continuing ``prompt``: greedy when ``temperature`` is 0, else sampled with ``seed``."""
    import torch

    if max_new_tokens < 1:
        raise ResearchError(f"--max-new-tokens {max_new_tokens}: give at least 1")
    if temperature < 0:
        raise ResearchError(f"--temperature {temperature}: give 0 (greedy) or more")
    if not prompt:
        raise ResearchError("--prompt is empty: give the text to continue")
    device = pick_device(device)
    model, tokenizer = load_hf(directory, device)
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    options = {"max_new_tokens": max_new_tokens, "pad_token_id": model.generation_config.pad_token_id}
    if temperature == 0:
        options.update(do_sample=False)
        mode = "greedy"
    else:
        options.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        mode = f"temperature {temperature:g}, seed {seed}"
        torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**inputs, **options)
    new_ids = output[0, inputs["input_ids"].shape[1]:].tolist()
    return Sample(prompt=prompt, text=tokenizer.decode(new_ids), new_ids=new_ids, mode=mode)
