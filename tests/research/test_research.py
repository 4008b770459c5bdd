"""The research loop on real parts: a tiny CPU training of two links, its HF export, samples and report."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, restored_titan_model, run_invoke, valid_env

pytestmark = pytest.mark.train

WIKI = SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"
GPT2 = SHARED_DATA / "tokenizers" / "gpt2"
NAME = "loop"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two train.run links of one experiment (steps 1-4, then 5-6 resumed), TensorBoard on; their console output."""
    root = tmp_path_factory.mktemp("lab")
    env = {**OFFLINE, **valid_env(), "INVOKE_PATHS_CHECKPOINT_DIR": str(root / "experiments"),
           "INVOKE_PATHS_RUNS_DIR": str(root / "runs"), "HOME": str(root / "home")}
    dataset = root / "wiki"
    ok(env, "data.preprocess", "--input", str(WIKI), "--output", str(dataset))
    outputs = []
    for steps in ("4", "6"):
        result = ok(env, "train.run", "--name", NAME, "--dataset", str(dataset), "--steps", steps,
                    "--checkpoint-interval", "2", "--batch-size", "2",
                    "--", "--metrics.log_freq", "1", "--metrics.enable_tensorboard")
        outputs.append(result.stdout + result.stderr)
    return {"env": env, "root": root, "logs": outputs, "dump": root / "experiments" / NAME}


def ok(env: dict, *args: str, timeout: float = 600):
    result = run_invoke(*args, env=env, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def one_line_error(env: dict, *args: str) -> str:
    result = run_invoke(*args, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def console_losses(text: str) -> dict[int, float]:
    """Training losses as TorchTitan printed them (not validation lines)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return {int(s): float(v) for s, v in re.findall(r"(?<!validate )step:\s*(\d+)\s+loss:\s*([0-9.]+)", plain)}


# --- export --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(lab: dict) -> Path:
    result = ok(lab["env"], "research.export", "--name", NAME, "--step", "4")
    out = lab["dump"] / "hf" / "step-4"
    assert str(out) in result.stdout
    return out


def test_export_loads_in_transformers_and_gives_torchtitans_logits(lab: dict, exported: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from titanenv.train.jobconfig import read

    assert {p.name for p in exported.iterdir()} >= {"model.safetensors", "config.json", "generation_config.json",
                                                    "tokenizer.json", "tokenizer_config.json"}
    config_json = json.loads((exported / "config.json").read_text())
    assert config_json["torch_dtype"] == "float32", "the CPU recipe trains in float32: so is its export"
    assert config_json["rope_theta"] == 500000.0 and config_json["rope_scaling"]["rope_type"] == "llama3"
    assert not list(exported.parent.glob(".step-4.tmp-*")), "no temporary directory is left behind"

    # TorchTitan's own model from the same checkpoint, restored here with DCP.
    toml = next((lab["root"] / "runs" / "train").glob("*/train.toml"))
    titan = restored_titan_model({**read(toml).model, "attention": "sdpa"}, lab["dump"] / "checkpoint" / "step-4")

    os.environ.update(OFFLINE)
    hf = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()
    batch = torch.randint(0, 50257, (2, 96), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        difference = (titan(batch) - hf(batch).logits).abs().max().item()
    print(f"max abs logit difference, TorchTitan vs transformers (fp32, CPU): {difference:.3g}")
    assert difference < 1e-4
    # Rotary frequencies: HF's llama3 scaling from config.json equals TorchTitan's cache (theta and scaling).
    angles = torch.angle(titan.layers["0"].attention.rope.cache[1])
    torch.testing.assert_close(hf.model.rotary_emb.inv_freq.float(), angles, rtol=1e-5, atol=1e-9)


def test_the_exported_tokenizer_round_trips_like_tokenizers(exported: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    os.environ.update(OFFLINE)
    text = "The Tower of London , a castle <unk> on the north bank of the Thames 's 1066 .<|endoftext|>"
    reference = Tokenizer.from_file(str(GPT2 / "tokenizer.json")).encode(text).ids
    exported_tokenizer = AutoTokenizer.from_pretrained(str(exported))
    ids = exported_tokenizer(text)["input_ids"]
    assert ids == reference
    assert exported_tokenizer.decode(ids) == text
    assert exported_tokenizer.eos_token == "<|endoftext|>" and exported_tokenizer.eos_token_id == 50256


def test_export_dtype_and_refusals(lab: dict, exported: Path) -> None:
    from safetensors import safe_open

    env = lab["env"]
    out = lab["root"] / "bf16"
    ok(env, "research.export", "--name", NAME, "--dtype", "bf16", "--output", str(out))  # latest: step 6
    assert json.loads((out / "titanenv_export.json").read_text())["step"] == 6
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(key).dtype) for key in weights.keys()} == {"torch.bfloat16"}

    assert one_line_error(env, "research.export", "--name", NAME, "--step", "4") == (
        f"error: {exported} already exists; give --overwrite to replace it, or --output elsewhere")
    assert "--step 3: no checkpoint" in one_line_error(env, "research.export", "--name", NAME, "--step", "3")
    assert "(steps there: 2, 4, 6)" in one_line_error(env, "research.export", "--name", NAME, "--step", "3")
    assert "no checkpoint (step-N with .metadata)" in one_line_error(env, "research.export", "--name", "nothing")
    assert "--dtype 'int8'" in one_line_error(env, "research.export", "--name", NAME, "--dtype", "int8",
                                               "--output", str(lab["root"] / "never"))
    before = (exported / "model.safetensors").stat().st_mtime_ns
    ok(env, "research.export", "--name", NAME, "--step", "4", "--overwrite")
    assert (exported / "model.safetensors").stat().st_mtime_ns != before


def test_a_submitted_export_renders_the_job_and_writes_nothing_dry(lab: dict) -> None:
    result = ok(lab["env"], "research.export", "--name", NAME, "--submit", "--dry")
    assert "-m titanenv.research export --checkpoint-folder" in result.stdout
    assert "#SBATCH --job-name=export" in result.stdout and "would run: sbatch --parsable" in result.stdout
    assert not (lab["root"] / "runs" / "export").exists()


@pytest.mark.parametrize("flavor", ["debugmodel", "1B"])
def test_config_json_gives_hf_the_shapes_of_torchtitan_flavors(flavor: str) -> None:
    """config.json from the spec our registry builds: every HF weight has the shape TorchTitan's adapter gives."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from titanenv.research.export import hf_config
    from titanenv.train.registry import model_spec

    spec = model_spec({"flavor": flavor})
    with torch.device("meta"):
        titan = spec.model.build()
        config = hf_config(spec, "bfloat16")
        hf = LlamaForCausalLM(LlamaConfig(**config))
    converted = spec.state_dict_adapter(spec.model, None).to_hf(titan.state_dict())
    expected = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    if config["tie_word_embeddings"]:
        expected.pop("lm_head.weight")
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert config["tie_word_embeddings"] == (flavor == "1B")


# --- samples --------------------------------------------------------------------------


def sample_output(env: dict, *args: str) -> tuple[str, str]:
    lines = ok(env, "research.sample", *args).stdout.strip().splitlines()
    assert lines[0].startswith("# ")
    return lines[0], "\n".join(lines[1:])


def test_greedy_samples_are_deterministic_and_match_transformers_greedy(lab: dict, exported: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "The castle was built in"
    env = lab["env"]
    header, from_checkpoint = sample_output(env, "--name", NAME, "--step", "4", "--prompt", prompt,
                                            "--max-new-tokens", "12")
    assert header == "# greedy, 12 new token(s)"
    assert sample_output(env, "--hf", str(exported), "--prompt", prompt, "--max-new-tokens", "12")[1] == from_checkpoint

    os.environ.update(OFFLINE)
    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    model = AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=50256)
    assert from_checkpoint == prompt + tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:])


def test_seeded_sampling_repeats_and_the_token_limit_holds(exported: Path) -> None:
    from titanenv.research.sample import generate

    prompt = "In 1066 the"
    first = generate(exported, prompt, max_new_tokens=10, temperature=1.2, seed=5)
    again = generate(exported, prompt, max_new_tokens=10, temperature=1.2, seed=5)
    assert first.new_ids == again.new_ids and first.mode == "temperature 1.2, seed 5"
    others = [generate(exported, prompt, max_new_tokens=10, temperature=1.2, seed=s).new_ids for s in (6, 7)]
    assert any(ids != first.new_ids for ids in others), "the seed decides what is drawn"
    short = generate(exported, prompt, max_new_tokens=3)
    long = generate(exported, prompt, max_new_tokens=9)
    assert len(short.new_ids) <= 3 and len(long.new_ids) <= 9
    assert long.new_ids[:len(short.new_ids)] == short.new_ids


# --- report ---------------------------------------------------------------------------------


def test_the_report_stitches_both_links_as_the_logs_show_them(lab: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    first, second = (console_losses(text) for text in lab["logs"])
    assert sorted(first) == [1, 2, 3, 4] and sorted(second) == [5, 6], "the second link resumed after step 4"
    losses = {**first, **second}
    best = min(losses, key=losses.get)

    result = ok(lab["env"], "research.report", "--name", NAME)
    rows = dict(line.split("  ", 1) for line in result.stdout.strip().splitlines())
    rows = {key.strip(): value.strip() for key, value in rows.items()}
    assert rows["steps"] == "1 to 6 (6 logged)"
    assert rows["links"].startswith("2 (loss from tensorboard")
    assert rows["chain links start at"] == "step 5"

    def value_at(row: str) -> tuple[float, int]:
        value, step = re.fullmatch(r"([0-9.]+) \(step (\d+)\)", rows[row]).groups()
        return float(value), int(step)

    # The table rounds TensorBoard's float32 to 4 places, the console printed 5.
    assert value_at("train loss first") == (pytest.approx(losses[1], abs=1e-4), 1)
    assert value_at("train loss last") == (pytest.approx(losses[6], abs=1e-4), 6)
    assert value_at("train loss best") == (pytest.approx(losses[best], abs=1e-4), best)
    assert rows["checkpoints"] == "step-2, step-4, step-6"
    # debug_cpu.toml validates at step 1 and every 20 steps: once in these 6.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", "".join(lab["logs"]))
    validated = {int(s): float(v) for s, v in re.findall(r"validate step:\s*(\d+)\s+loss:\s*([0-9.]+)", plain)}
    assert sorted(validated) == [1]
    assert value_at("validation loss last") == (pytest.approx(validated[1], abs=2e-4), 1)
    assert re.fullmatch(r"median [0-9,]+, last [0-9,]+", rows["tokens/s per device"])
    assert re.fullmatch(r"\d+:\d\d:\d\d", rows["wall time"])

    figure = Path(rows["figure"])
    assert figure.parent.parent == lab["root"] / "runs" / "train", "in the newest training run's directory"
    data = figure.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert matplotlib.image.imread(str(figure)).shape[:2] == (650, 800)
    summary = json.loads(figure.with_suffix(".json").read_text())
    assert {int(k): v for k, v in summary["series"]["loss"].items()} == pytest.approx(losses, abs=2e-5)


LOG = """\
[titan] 2026-01-02 10:00:00,000 - root - INFO - Training starts at step 7
[titan] 2026-01-02 10:00:01,500 - root - INFO - \x1b[31mstep:  7  \x1b[32mloss:  6.50000  \x1b[38;2;180;60;0mgrad_norm:  1.0  \
\x1b[38;2;54;234;195mmemory: 30.00GiB(40.00%)  \x1b[34mtps: 5,762  \x1b[36mtflops: 250.10  \x1b[35mmfu: 33.50%\x1b[39m
[titan] 2026-01-02 10:00:03,000 - root - INFO - \x1b[33mvalidate step:  7  \x1b[32mloss:  6.7000  \
\x1b[38;2;54;234;195mmemory: 30.00GiB(40.00%)  \x1b[34mtps: 20,000\x1b[39m
[titan] 2026-01-02 10:00:04,000 - root - INFO - step:  8  loss:  6.25000  grad_norm:  1.0  memory: 30.00GiB(40.00%)  \
tps: 6,000  tflops: 260.00  mfu: N/A
"""


def test_job_log_lines_give_losses_rates_validation_and_time() -> None:
    from titanenv.research.report import parse_log, stitch

    link = parse_log(LOG)
    assert link.values["loss"] == {7: 6.5, 8: 6.25}
    assert link.values["validation_loss"] == {7: 6.7}
    assert link.values["tps"] == {7: 5762.0, 8: 6000.0}
    assert link.values["mfu"] == {7: 33.5}
    assert link.wall_seconds == pytest.approx(2.5)
    redone = parse_log(LOG.replace("6.25000", "6.20000").replace("step:  7", "step:  9"), start=link.start + 60)
    assert stitch([redone, link], "loss") == {7: 6.5, 8: 6.2, 9: 6.5}, "a later link's step replaces an earlier one's"
