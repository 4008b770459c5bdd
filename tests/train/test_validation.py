"""Validation on held-out data: data.split, the validator's loader, and validation losses of real CPU trainings."""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, SHARED_DATA, restored_titan_model, run_invoke
from titanenv.data import preprocess as pre
from titanenv.data.indexed import IndexedDataset, bin_path, idx_path
from titanenv.train.dataset import TrainDataError

pytestmark = pytest.mark.train

WIKI = SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"
GPT2 = SHARED_DATA / "tokenizers" / "gpt2"
VALIDATE = re.compile(r"validate step:\s*(\d+)\s+loss:\s*([0-9.]+)")


@pytest.fixture(scope="module")
def wiki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "wiki"
    pre.run(pre.prepare([str(WIKI)], base=REPO_ROOT, tokenizer=str(GPT2), output=out), workers=1)
    return out


def ok(*args: str, env: dict | None = None, timeout: float = 600):
    result = run_invoke(*args, env=env, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def one_line_error(*args: str, env: dict | None = None) -> str:
    result = run_invoke(*args, env=env, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, (result.stdout + result.stderr)[-3000:]
    return lines[0]


# --- data.split --------------------------------------------------------------------------


def _megatron_files(dtype: np.dtype, documents: list[list[np.ndarray]]) -> tuple[bytes, bytes]:
    """The .bin and .idx Megatron-LM writes for these documents (each a list of sequences), spelled out here."""
    sequences = [seq for doc in documents for seq in doc]
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype(np.int64) * dtype.itemsize
    doc_index = np.concatenate([[0], np.cumsum([len(doc) for doc in documents])]).astype(np.int64)
    code = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}[dtype]
    index = (b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code) + struct.pack("<Q", len(lengths))
             + struct.pack("<Q", len(doc_index)) + lengths.tobytes() + pointers.tobytes() + doc_index.tobytes())
    data = b"".join(np.asarray(s, dtype=dtype).tobytes() for s in sequences)
    return data, index


def _key(document: list[np.ndarray]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(s.tolist()) for s in document)


def _documents(prefix: Path) -> list[list[np.ndarray]]:
    dataset = IndexedDataset(prefix)
    bounds = dataset.document_indices
    return [[np.array(dataset[s]) for s in range(bounds[d], bounds[d + 1])] for d in range(dataset.document_count)]


def test_split_holds_out_whole_documents_byte_exact_and_the_same_each_time(wiki: Path, tmp_path: Path) -> None:
    outputs = {}
    for name, seed in (("a", "1234"), ("b", "1234"), ("c", "7")):
        train, valid = tmp_path / name / "train", tmp_path / name / "valid"
        result = ok("data.split", "--prefix", str(wiki), "--valid-fraction", "0.05", "--seed", seed,
                    "--train-output", str(train), "--valid-output", str(valid))
        assert f"valid {valid}.bin/.idx: 6 documents" in result.stdout  # round(0.05 * 122)
        outputs[name] = (train, valid)
    files = {name: [p.read_bytes() for prefix in pair for p in (bin_path(prefix), idx_path(prefix))]
             for name, pair in outputs.items()}
    assert files["a"] == files["b"], "same input, fraction and seed: the same bytes"
    assert files["a"][2] != files["c"][2], "another seed holds out other documents"

    original = _documents(wiki)
    position = {_key(doc): k for k, doc in enumerate(original)}
    assert len(position) == len(original) == 122, "the corpus's documents are distinct"
    train_docs, valid_docs = (_documents(prefix) for prefix in outputs["a"])
    train_at, valid_at = ([position[_key(doc)] for doc in docs] for docs in (train_docs, valid_docs))
    assert train_at == sorted(train_at) and valid_at == sorted(valid_at), "each part keeps the original order"
    assert sorted(train_at + valid_at) == list(range(122)), "together they are every document, once"
    for prefix, docs in zip(outputs["a"], (train_docs, valid_docs)):
        data, index = _megatron_files(np.dtype(np.uint16), docs)
        assert bin_path(prefix).read_bytes() == data and idx_path(prefix).read_bytes() == index
    verified = ok("data.verify", "--prefix", str(outputs["a"][1]))
    assert verified.stdout.startswith(f"ok {outputs['a'][1]}: 6 documents")
    made = ok("data.inspect", "--prefix", str(outputs["a"][1]))
    assert f"decoded with {GPT2}" in made.stdout, "the split names the tokenizer its source was made with"


def test_split_keeps_documents_of_several_sequences_whole(tmp_path: Path) -> None:
    from titanenv.data.split import split

    rng = np.random.default_rng(0)
    documents = [[rng.integers(0, 60000, size=int(rng.integers(1, 9))) for _ in range(1 + k % 3)] for k in range(20)]
    data, index = _megatron_files(np.dtype(np.uint16), documents)
    source = tmp_path / "multi"
    bin_path(source).write_bytes(data)
    idx_path(source).write_bytes(index)
    result = split(source, tmp_path / "t", tmp_path / "v", fraction=0.25, seed=3)
    assert (result.train.documents, result.valid.documents) == (15, 5)
    train_docs, valid_docs = _documents(tmp_path / "t"), _documents(tmp_path / "v")
    key = [_key(doc) for doc in documents]
    assert sorted(map(_key, train_docs + valid_docs)) == sorted(key)
    for prefix, docs in (("t", train_docs), ("v", valid_docs)):
        expected = _megatron_files(np.dtype(np.uint16), docs)
        assert (bin_path(tmp_path / prefix).read_bytes(), idx_path(tmp_path / prefix).read_bytes()) == expected
        # In the original order.
        positions = [key.index(_key(doc)) for doc in docs]
        assert positions == sorted(positions)


def test_split_refusals_are_one_line_and_leave_outputs_alone(wiki: Path, tmp_path: Path) -> None:
    train, valid = tmp_path / "train", tmp_path / "valid"
    common = ["data.split", "--prefix", str(wiki), "--train-output", str(train), "--valid-output", str(valid)]
    ok(*common, "--valid-fraction", "0.05")
    before = idx_path(valid).read_bytes()
    line = one_line_error(*common, "--valid-fraction", "0.1")
    assert line == (f"error: {idx_path(train)} exists; pass --overwrite to replace it "
                    "(the old one stays until the new one is complete)")
    assert idx_path(valid).read_bytes() == before
    for fraction in ("0", "1", "1.5"):
        assert one_line_error(*common, "--valid-fraction", fraction).endswith("must be between 0 and 1 (e.g. 0.05)")
    assert "must differ" in one_line_error("data.split", "--prefix", str(wiki), "--valid-fraction", "0.1",
                                           "--train-output", str(wiki), "--valid-output", str(valid))
    ok(*common, "--valid-fraction", "0.1", "--overwrite")
    assert IndexedDataset(valid).document_count == 12
    assert not list(tmp_path.glob(".*.tmp-*")), "no temporary files are left"


# --- the validator's loader ----------------------------------------------------------------


def _windows(prefix: Path, seq_len: int) -> np.ndarray:
    """Every window of seq_len + 1 tokens, cut here from the .bin: window i starts at token i * seq_len."""
    tokens = np.fromfile(bin_path(prefix), dtype=np.uint16).astype(np.int64)
    count = (len(tokens) - 1) // seq_len
    return np.stack([tokens[i * seq_len : (i + 1) * seq_len + 1] for i in range(count)])


def _validation_loader(prefix: Path, *, infinite: bool, rank: int = 0, world: int = 1, batch: int = 4,
                       seq_len: int = 128):
    from titanenv.train.loader import ValidationDataLoader

    config = ValidationDataLoader.Config(paths=[str(prefix)], vocab_size=50257)
    # What TorchTitan's validator does with it (components/validate.py).
    config = dataclasses.replace(config, infinite=infinite)
    return config.build(dp_world_size=world, dp_rank=rank, tokenizer=None, seq_len=seq_len, local_batch_size=batch)


def _rows(loader) -> list[tuple[int, ...]]:
    return [tuple(row.tolist()) for inputs, labels in loader
            for row in np.concatenate([inputs["input"].numpy(), labels[:, -1:].numpy()], axis=1)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_one_pass_gives_every_rank_the_same_batches_of_distinct_windows(wiki: Path, world: int) -> None:
    windows = _windows(wiki, 128)
    per_rank = len(windows) // (4 * world)
    seen = []
    for rank in range(world):
        rows = _rows(_validation_loader(wiki, infinite=False, rank=rank, world=world))
        assert len(rows) == per_rank * 4, "whole batches, as many on every rank"
        assert rows == _rows(_validation_loader(wiki, infinite=False, rank=rank, world=world)), "the same each time"
        seen.extend(rows)
    used = per_rank * 4 * world
    assert sorted(seen) == sorted(tuple(w.tolist()) for w in windows[:used]), "each window once; the rest left out"
    assert len(windows) - used < 4 * world


def test_fixed_steps_read_the_same_seeded_windows_each_time(wiki: Path) -> None:
    def first(n: int, seq_len: int = 128) -> list[tuple[int, ...]]:
        iterator = iter(_validation_loader(wiki, infinite=True, batch=2, seq_len=seq_len))
        return _rows([next(iterator) for _ in range(n)])

    windows = [tuple(w.tolist()) for w in _windows(wiki, 128)]
    again = first(3)
    assert again == first(3) and set(again) <= set(windows)
    assert again != windows[:6], "a seeded order, not the first windows of the file"
    few = len(_windows(wiki, 4096))
    assert len(first(few, 4096)) == 2 * few, "endless: steps beyond one pass go on"


def test_too_little_validation_data_is_named_in_one_line(wiki: Path) -> None:
    windows = len(_windows(wiki, 4096))
    with pytest.raises(TrainDataError) as caught:
        _validation_loader(wiki, infinite=False, world=windows, batch=2, seq_len=4096)
    assert str(caught.value) == (
        f"validation datasets ([data] valid_datasets): {windows} window(s) of seq_len + 1 = 4,097 tokens cannot give "
        f"each of {windows} data-parallel rank(s) one batch of 2; add data or lower training.local_batch_size or "
        "training.seq_len")


def test_the_recipe_gives_torchtitans_validator_our_loader_over_the_valid_datasets(wiki: Path) -> None:
    from titanenv.config import load_config
    from titanenv.train.job import TrainRequest, prepare
    from titanenv.train.loader import ValidationDataLoader
    from titanenv.train.registry import trainer_config

    config = load_config(REPO_ROOT, flags={"data.output": str(wiki), "data.valid_output": str(wiki) + "-held"})
    (Path(str(wiki) + "-held.idx")).unlink(missing_ok=True)
    with pytest.raises(TrainDataError, match=r"^validation dataset .*wiki-held\.idx: no such index file"):
        prepare(config, TrainRequest())
    config = load_config(REPO_ROOT, flags={"data.output": str(wiki), "data.valid_output": str(wiki)})
    job = prepare(config, TrainRequest()).job
    validator = trainer_config(job).validator
    assert isinstance(validator.dataloader, ValidationDataLoader.Config)
    assert validator.dataloader.paths == [str(wiki)] and validator.dataloader.vocab_size == 50257
    assert (validator.enable, validator.freq, validator.steps) == (False, 10, -1), "TorchTitan's options set these"
    assert dataclasses.replace(validator.dataloader, infinite=True).infinite


def test_enabled_validation_without_valid_datasets_fails_before_training_in_one_line(wiki: Path,
                                                                                      tmp_path: Path) -> None:
    recipe = (REPO_ROOT / "train_configs" / "debug_cpu.toml").read_text()
    line = 'valid_datasets = ["{data_valid_output}"]\n'
    assert line in recipe
    bad = tmp_path / "no_valid.toml"
    bad.write_text(recipe.replace(line, ""))
    error = one_line_error("train.run", "--config", str(bad), "--dataset", str(wiki))
    assert error == (f"error: {bad}: [validator] enable = true needs [data] valid_datasets (datasets written by "
                     'data.preprocess, e.g. ["{data_valid_output}"])')


# --- real trainings ---------------------------------------------------------------------------

SEQ_LEN, BATCH = 128, 2


@pytest.fixture(scope="module")
def held_out(wiki: Path) -> tuple[Path, Path, Path]:
    """wiki split 95/5 by data.split, and a recipe validating one pass over the held-out part at steps 1, 2, 4."""
    root = wiki.parent / "split"
    ok("data.split", "--prefix", str(wiki), "--valid-fraction", "0.05", "--train-output", str(root / "train"),
       "--valid-output", str(root / "valid"))
    recipe = (REPO_ROOT / "train_configs" / "debug_cpu.toml").read_text()
    recipe, count = re.subn(r"(?m)^freq = \d+\nsteps = \d+$", "freq = 2\nsteps = -1", recipe)
    assert count == 1
    toml = root / "one_pass.toml"
    toml.write_text(recipe)
    return root / "train", root / "valid", toml


def _train(name: str, procs: int, held: tuple[Path, Path, Path], tmp: Path) -> tuple[str, dict[int, float], Path]:
    """A 4-step training validating at steps 1, 2, 4; its output, validation losses (TensorBoard's) and folder."""
    from titanenv.research.report import parse_tensorboard

    train, valid, toml = held
    env = {"INVOKE_DATA_VALID_OUTPUT": str(valid), "INVOKE_PATHS_CHECKPOINT_DIR": str(tmp / "experiments"),
           "INVOKE_PATHS_RUNS_DIR": str(tmp / "runs")}
    result = ok("train.run", "--config", str(toml), "--name", name, "--dataset", str(train), "--steps", "4",
                "--checkpoint-interval", "2", "--batch-size", str(BATCH), "--seq-len", str(SEQ_LEN),
                "--procs-per-node", str(procs), "--", "--metrics.log_freq", "1", env=env)
    dump = tmp / "experiments" / name
    (events,) = sorted((dump / "tb").glob("*/**/events.out.tfevents.*"))
    return (re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr),
            parse_tensorboard(events).values["validation_loss"], dump)


def _independent_loss(dump: Path, step: int, windows: np.ndarray, toml: Path) -> float:
    """Cross-entropy over these windows with the checkpoint's weights in TorchTitan's model, restored here."""
    import torch

    from titanenv.train.jobconfig import read

    model = restored_titan_model(read(toml).model, dump / "checkpoint" / f"step-{step}")
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), 16):
            batch = torch.from_numpy(windows[start : start + 16])
            logits = model(batch[:, :-1]).float()
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       batch[:, 1:].reshape(-1), reduction="sum").item()
            count += batch[:, 1:].numel()
    return total / count


@pytest.mark.parametrize("procs", [1, 2])
def test_validation_losses_are_reported_repeat_and_equal_an_independent_computation(
        procs: int, held_out: tuple[Path, Path, Path], tmp_path: Path) -> None:
    train, valid, toml = held_out
    runs = [_train(f"valid-{procs}-{i}", procs, held_out, tmp_path) for i in range(2)]
    (text, losses, dump), (_, again, _) = runs
    assert sorted(losses) == [1, 2, 4], "at step 1 and every freq = 2 steps"
    printed = {int(s): float(v) for s, v in VALIDATE.findall(text)}
    assert sorted(printed) == [1, 2, 4] and all(printed[s] == pytest.approx(losses[s], abs=1e-4) for s in printed)
    assert losses == again, "a second run validates on the same windows with the same weights"
    assert losses[4] < losses[1]

    windows = _windows(valid, SEQ_LEN)
    used = len(windows) // (BATCH * procs) * (BATCH * procs)
    dropped = len(windows) - used
    assert dropped, "the test wants a remainder to leave out"
    assert (f"validation: one pass over {len(windows)} window(s) of 1 dataset(s): {used // (BATCH * procs)} batch(es) "
            f"of {BATCH} on each of {procs} data-parallel rank(s); the last {dropped} window(s) left out") in text
    for step in (2, 4):
        independent = _independent_loss(dump, step, windows[:used], toml)
        print(f"{procs} process(es), step {step}: validation loss {losses[step]:.7f} (TorchTitan, TensorBoard), "
              f"independent {independent:.7f}, difference {abs(losses[step] - independent):.2e}")
        assert losses[step] == pytest.approx(independent, abs=2e-5)
