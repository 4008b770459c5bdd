"""--torchtitan DIR: an older TorchTitan release trains through its own train.py, here and on the test Slurm.

The release is TorchTitan 0.2.2 as published on PyPI (the generation the
TrustLLM fork is built on), unpacked from the wheel that .ci/run downloads;
its TOML is its own (no [model]/[data] of ours), its log lines are its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.fixtures.slurm import LocalSlurm
from tests.helpers import REPO_ROOT, SHARED_DATA, run_invoke, submitted_ids

pytestmark = pytest.mark.train

RELEASES = REPO_ROOT / ".work" / "releases"
WIKI = SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"
STEP = re.compile(r"step:\s*(\d+)\s+loss:\s*([0-9.naninf]+)")
# TorchTitan 0.2's llama3 "debugmodel" flavor has a vocabulary of 2,048 ids.
VOCAB = 2048


def steps(text: str) -> list[int]:
    return sorted({int(s) for s, _ in STEP.findall(re.sub(r"\x1b\[[0-9;]*m", "", text))})


def _download_step() -> str:
    for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines():
        if "pip download" in line and "torchtitan" in line:
            return line.strip()
    raise AssertionError(".ci/run has no step downloading the TorchTitan release")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release unpacked: a directory laid out like a checkout (torchtitan/train.py)."""
    wheels = sorted(RELEASES.glob("torchtitan-0.2.*-py3-none-any.whl"))
    if not wheels:
        message = f"no TorchTitan 0.2 wheel in {RELEASES}; the download step of .ci/run fetches it: {_download_step()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("torchtitan-0.2")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(root)
    assert (root / "torchtitan" / "train.py").is_file()
    return root


@pytest.fixture(scope="module")
def old_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release's own kind of TOML: its c4_test loader on a local JSONL directory, a tokenizer of 2,048 ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("old-assets")
    texts = [json.loads(line)["text"] for line in WIKI.read_text(encoding="utf-8").splitlines()[:2000]]
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert tokenizer.get_vocab_size() <= VOCAB
    (root / "tokenizer").mkdir()
    tokenizer.save(str(root / "tokenizer" / "tokenizer.json"))
    toml = root / "old_debug.toml"
    toml.write_text(f"""\
[job]
description = "TorchTitan 0.2 through titanenv"

[model]
name = "llama3"
flavor = "debugmodel"
hf_assets_path = {json.dumps(str(root / "tokenizer"))}

[optimizer]
lr = 8e-4

[lr_scheduler]
warmup_steps = 2

[training]
local_batch_size = 2
seq_len = 128
steps = 10
dataset = "c4_test"
dataset_path = {json.dumps(str(root / "data"))}
mixed_precision_param = "float32"

[activation_checkpoint]
mode = "none"

[checkpoint]
enable = true
interval = 2
last_save_model_only = false
""")
    return toml


def checkpoint_dir() -> Path:
    from titanenv.config import load_config

    return load_config(REPO_ROOT).paths.checkpoint_dir


def invoke(release: Path, task: str, *args: str, extra: tuple[str, ...] = ("--metrics.log_freq", "1"),
           checkout: Path | None = None, importable: bool = True, timeout: float = 600):
    """A train task in the --torchtitan mode, TorchTitan options after --; the job's Python imports the release."""
    env = {"PYTHONPATH": str(release)} if importable else {}
    return run_invoke(task, "--torchtitan", str(checkout or release), *args, "--", *extra, env=env, timeout=timeout)


def ok(result) -> str:
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def test_train_run_trains_the_old_release_with_its_own_entry_point_and_resumes(release: Path, old_toml: Path) -> None:
    common = ["train.run", "--config", str(old_toml), "--name", "old-here", "--checkpoint-interval", "2"]
    first = ok(invoke(release, *common, "--steps", "4"))
    run_dir = Path(re.search(r"^run (\S+);", first, re.M).group(1))
    record = json.loads((run_dir / "run.json").read_text())["extra"]["train"]
    assert record["torchtitan"] == str(release) and record["config"] == str(old_toml)
    assert record["command"][-13:] == [
        f"{release}/torchtitan/train.py", "--job.config_file", str(run_dir / "train.toml"),
        "--job.dump_folder", str(checkpoint_dir() / "old-here"),
        "--experimental.custom_import", "titanenv.train.cpu_checkout",
        "--training.steps", "4", "--checkpoint.interval", "2", "--metrics.log_freq", "1"]
    # TorchTitan 0.2's own lines, from its own train.py, on the CPU.
    assert "Starting job: TorchTitan 0.2 through titanenv" in first
    assert "titanenv: TorchTitan runs on the CPU" in first and "CPU capacity:" in first
    assert "Training starts at step 1" in first and steps(first) == [1, 2, 3, 4]
    folder = checkpoint_dir() / "old-here" / "checkpoint"
    assert f"Checkpoints will be loaded from and saved to {folder}" in first
    assert "Finished saving the checkpoint" in first
    assert {p.name for p in folder.iterdir()} == {"step-2", "step-4"}

    # The same name again, with more steps: it resumes after its last checkpoint.
    second = ok(invoke(release, *common, "--steps", "6"))
    assert f"Loading the checkpoint from {folder}/step-4" in second
    assert "Training starts at step 5" in second and steps(second) == [5, 6], second[-3000:]
    assert "step-6" in {p.name for p in folder.iterdir()}


def test_with_no_toml_option_the_tomls_keys_become_its_options(release: Path, old_toml: Path) -> None:
    # How TorchTitan 0.3 and later take a configuration; 0.2 takes it so too.
    result = ok(invoke(release, "train.run", "--toml-option", "", "--config", str(old_toml), "--name", "as-options",
                       "--steps", "2"))
    run_dir = Path(re.search(r"^run (\S+);", result, re.M).group(1))
    command = json.loads((run_dir / "run.json").read_text())["extra"]["train"]["command"]
    assert "--job.config_file" not in command
    entry = command.index(f"{release}/torchtitan/train.py")
    assert command[entry + 1:entry + 9] == ["--job.description", "TorchTitan 0.2 through titanenv",
                                            "--model.name", "llama3", "--model.flavor", "debugmodel",
                                            "--model.hf_assets_path", str(old_toml.parent / "tokenizer")]
    assert command[command.index("--checkpoint.enable"):][:4] == [
        "--checkpoint.enable", "--checkpoint.interval", "2", "--checkpoint.no-last_save_model_only"]
    assert steps(result) == [1, 2]
    # last_save_model_only = false arrived: a model-only save would say so.
    assert "Saving a full checkpoint at last step, step 2." in result


def test_the_checkout_mode_fails_before_anything_starts_in_one_line(release: Path, old_toml: Path,
                                                                   tmp_path: Path) -> None:
    malformed = tmp_path / "malformed.toml"
    malformed.write_text("[training\nsteps = 3\n")
    (blocked := checkpoint_dir() / "blocked").parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the dump folder would go")
    missing = tmp_path / "nowhere"
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text(old_toml.read_text().replace("steps = 10", "stepz = 10"))
    refuses = f"the TorchTitan of {release} refuses the job's configuration: "
    cases = [
        ({"checkout": missing}, [], f"error: train.torchtitan.checkout: {missing}: no such directory"),
        ({}, ["--torchtitan-entry", "torchtitan/nosuch.py"],
         f"error: train.torchtitan.entry: no torchtitan/nosuch.py in the checkout {release}"),
        ({}, ["--config", str(malformed)], f"error: {malformed}: "),
        ({}, ["--name", "blocked"],
         f"error: {blocked}: cannot hold the job's checkpoints: {blocked} is not a directory"),
        # The release's own parser, in the job's Python, before the job waits in the queue.
        ({}, ["--config", str(misspelt)],
         f"error: {misspelt}: {refuses}ValueError: Invalid field names in "
         "<class 'torchtitan.config.job_config.Training'> data: {'stepz'}."),
        ({"extra": ("--training.stepz", "3")}, [],
         f"error: {old_toml}: {refuses}Unrecognized options: --training.stepz, 3 (perhaps --training.steps INT)"),
        ({"extra": ("--training.steps", "many")}, [],
         f"error: {old_toml}: {refuses}Error parsing --training.steps: invalid literal for int() with base 10: "
         "'many'"),
        # This Python's own torchtitan is our 0.3.0, not the release's.
        ({"importable": False}, [], f"error: train.torchtitan.checkout: the job's Python ({sys.executable}) imports "
                                    f"torchtitan from {Path(find_spec('torchtitan').origin).parent}, not from the "
                                    f"checkout {release}; install the checkout there"),
    ]
    for task in ("train.submit", "train.run"):
        for options, args, expected in cases:
            config = [] if "--config" in args else ["--config", str(old_toml)]
            result = invoke(release, task, *config, *args, timeout=300, **options)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 1 and len(lines) == 1, (task, args, result.stdout, result.stderr)
            assert lines[0].startswith(expected), (task, lines[0])
            assert "submitted job" not in result.stdout and "Training starts" not in result.stdout


@pytest.mark.slurm
def test_jobs_and_a_chain_on_the_local_slurm_resume_the_old_release(release: Path, old_toml: Path,
                                                                    slurm_env: LocalSlurm) -> None:
    common = ["train.submit", "--config", str(old_toml), "--name", "old-slurm", "--procs-per-node", "2",
              "--checkpoint-interval", "2", "--time", "00:10:00", "--partition", "debug"]
    dump = checkpoint_dir() / "old-slurm"

    dry = ok(invoke(release, *common, "--steps", "2", "--dry"))
    toml = re.search(r"--job\.config_file (\S+/[^/ ]+\.train\.toml) ", dry).group(1)
    words = [f"{release}/torchtitan/train.py", "--job.config_file", toml, "--job.dump_folder", str(dump),
             "--experimental.custom_import", "titanenv.train.cpu_checkout", "--training.steps", "2",
             "--checkpoint.interval", "2", "--metrics.log_freq", "1"]
    assert f"# torchtitan: {shlex.join(words)}\n" in dry
    # The same words in the rendered script, after the launcher's options.
    assert f'--rdzv_id="$RDZV_ID" \\\n    {shlex.join(words)} &\n' in dry  # srun in the background, waited for
    assert not Path(toml).exists()

    def run_to_end(*args: str) -> list[str]:
        ids = submitted_ids(ok(invoke(release, *common, *args)))
        waited = run_invoke("jobs.wait", "--job", ",".join(ids), "--interval", "0.5", timeout=600)
        logs = [run_invoke("jobs.logs", "--job", i, "--err").stdout + run_invoke("jobs.logs", "--job", i).stdout
                for i in ids]
        assert waited.returncode == 0, "".join(logs)[-4000:]
        return logs

    (first,) = run_to_end("--steps", "2")
    assert "Training starts at step 1" in first and steps(first) == [1, 2], first[-3000:]
    assert "global batch size 4" in first  # two processes, one data-parallel group
    # Two more steps in a chain of two: the first link resumes after step 2,
    # the second finds the training done and starts after its last checkpoint.
    link1, link2 = run_to_end("--steps", "4", "--chain", "2")
    assert f"Loading the checkpoint from {dump}/checkpoint/step-2" in link1
    assert "Training starts at step 3" in link1 and steps(link1) == [3, 4], link1[-3000:]
    assert "Training starts at step 5" in link2 and steps(link2) == [], link2[-3000:]
    assert "Training completed" in link2
