"""The recipes in train_configs/: TorchTitan accepts each, their stated sizes, HSDP degrees, the machine's default."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, SHARED_DATA, run_invoke

pytestmark = pytest.mark.train

RECIPES = sorted((REPO_ROOT / "train_configs").glob("*.toml"))
WIKI = SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from titanenv.data import preprocess as pre

    out = tmp_path_factory.mktemp("data") / "wiki"
    plan = pre.prepare([str(WIKI)], base=REPO_ROOT, tokenizer=str(SHARED_DATA / "tokenizers" / "gpt2"), output=out)
    pre.run(plan, workers=1)
    return out


def _resolved(recipe: Path, dataset: Path, tmp_path: Path, *, machine: str = "jwb", nodes: int = 4) -> Path:
    """The recipe as train.submit --machine MACHINE --nodes NODES would hand it to the job."""
    from titanenv.config import load_config
    from titanenv.train.job import TrainRequest, prepare, procs_per_node, write_resolved

    config = load_config(REPO_ROOT, flags={"machine": machine, "train.config": str(recipe),
                                           "data.output": str(dataset), "slurm.nodes": nodes})
    prepared = prepare(config, TrainRequest(), nodes=nodes, procs=procs_per_node(config))
    return write_resolved(prepared, tmp_path / "train.toml")


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_torchtitan_accepts_every_recipe(recipe: Path, dataset: Path, tmp_path: Path) -> None:
    # What train.submit runs where the job will run: TorchTitan's own ConfigManager on our options.
    toml = _resolved(recipe, dataset, tmp_path)
    done = subprocess.run([sys.executable, "-m", "titanenv.train", "--check", str(toml), "--dump_folder",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


PARSED = '''
import json, os, sys
from titanenv.train import cpu
cpu.apply()
from torchtitan.config import ConfigManager
from titanenv.train.__main__ import command_line
from pathlib import Path
os.environ["TITANENV_TRAIN_TOML"] = sys.argv[1]
c = ConfigManager().parse_args(command_line(Path(sys.argv[1]), ["--dump_folder", sys.argv[2]]))
print(json.dumps({
    "flavor": c.model_spec.flavor,
    "ac": type(c.activation_checkpoint).__qualname__,
    "param": c.training.mixed_precision_param, "reduce": c.training.mixed_precision_reduce,
    "compile": c.compile.enable, "optimizer": c.optimizer.implementation,
    "checkpoint": [c.checkpoint.enable, c.checkpoint.async_mode, c.checkpoint.export_dtype],
    "tensorboard": [c.metrics.enable_tensorboard, c.metrics.save_tb_folder, c.dump_folder],
    "print_config": c.debug.print_config,
    "degrees": [c.parallelism.data_parallel_replicate_degree, c.parallelism.data_parallel_shard_degree],
}))
'''


def test_the_8b_recipe_has_the_original_settings_as_torchtitan_reads_them(dataset: Path, tmp_path: Path) -> None:
    toml = _resolved(REPO_ROOT / "train_configs" / "llama3_8b.toml", dataset, tmp_path, nodes=4)
    done = subprocess.run([sys.executable, "-c", PARSED, str(toml), "/scratch/experiments/llama3_8b"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert parsed == {
        "flavor": "8B", "ac": "SelectiveAC.Config", "param": "bfloat16", "reduce": "float32", "compile": True,
        "optimizer": "fused", "checkpoint": [True, "async", "bfloat16"],
        # TensorBoard writes to <dump_folder>/<save_tb_folder>/<date>: the experiment folder.
        "tensorboard": [True, "tb", "/scratch/experiments/llama3_8b"],
        "print_config": True, "degrees": [4, 4],
    }


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_each_recipe_states_the_parameter_count_of_the_model_it_builds(recipe: Path) -> None:
    import tomllib

    import torch

    from titanenv.train.registry import model_spec

    stated = re.search(r"^# Size: ([\d,]+) parameters", recipe.read_text(), re.MULTILINE)
    assert stated, f"{recipe.name}: no '# Size: N parameters' comment"
    with torch.device("meta"):
        model = model_spec(tomllib.loads(recipe.read_text())["model"]).model.build()
    assert f"{sum(p.numel() for p in model.parameters()):,}" == stated.group(1)


def test_submit_dry_on_four_jwb_nodes_shows_the_derived_hsdp_degrees(dataset: Path) -> None:
    result = run_invoke("train.submit", "--dry", "--machine", "jwb", "--nodes", "4", "--dataset", str(dataset))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "4 nodes x 4 = 16 processes; data_parallel_replicate_degree = 4, data_parallel_shard_degree = 4" in out
    assert "#   data_parallel_replicate_degree = 4\n#   data_parallel_shard_degree = 4\n" in out
    (command,) = [line for line in out.splitlines() if line.startswith("# torchtitan: ")]
    assert "--parallelism.data_parallel_replicate_degree 4 --parallelism.data_parallel_shard_degree 4" in command
    assert "--nproc_per_node=4" in out and "#SBATCH --nodes=4" in out
    # jwb has GPUs: the default recipe is the GPU smoke one.
    assert f"Resolved from {REPO_ROOT / 'train_configs' / 'gpu_smoke.toml'}" in out

    one = run_invoke("train.submit", "--dry", "--machine", "jwb", "--nodes", "1", "--procs-per-node", "2",
                     "--dataset", str(dataset))
    assert "1 node x 2 = 2 processes; data_parallel_replicate_degree = 1, data_parallel_shard_degree = 2" in one.stdout
    here = run_invoke("train.run", "--dry", "--config", "train_configs/llama3_8b.toml", "--procs-per-node", "2",
                      "--dataset", str(dataset))
    assert "--parallelism.data_parallel_replicate_degree 1 --parallelism.data_parallel_shard_degree 2" in here.stdout


def test_the_default_recipe_follows_the_machine_and_an_explicit_one_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from titanenv.config import load_config

    recipes = REPO_ROOT / "train_configs"
    assert load_config(REPO_ROOT, flags={"machine": "local"}).recipe_path() == recipes / "debug_cpu.toml"
    for machine in ("jwb", "jwc", "jrc", "jpb", "mn5a"):
        assert load_config(REPO_ROOT, flags={"machine": machine}).recipe_path() == recipes / "gpu_smoke.toml"
    flags = {"machine": "jwb", "train.config": "train_configs/llama3_8b.toml"}
    assert load_config(REPO_ROOT, flags=flags).recipe_path() == recipes / "llama3_8b.toml"
    checked = run_invoke("config.check", "--all")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shown = run_invoke("config.show", "--machine", "jwb", "--key", "train")
    assert re.search(r"train\.config\s+auto\s+# invoke\.yaml:\d+", shown.stdout), shown.stdout
    assert re.search(r"train\.auto_config\.gpu\s+train_configs/gpu_smoke\.toml\s+#", shown.stdout), shown.stdout
    resolved = run_invoke("config.show", "--machine", "jwb", "--key", "derived.train_config")
    assert re.search(rf"derived\.train_config\s+{re.escape(str(recipes / 'gpu_smoke.toml'))}\s+"
                     r"# train\.config auto -> train\.auto_config\.gpu \(cluster\.gpus_per_node 4\)$",
                     resolved.stdout.strip()), resolved.stdout
    # A value that cannot resolve is shown with its one-line problem, not a failure of the whole listing.
    unresolved = run_invoke("config.show", "--key", "derived.train_config", env={"INVOKE_TRAIN_CONFIG": "{nosuch}/x.toml"})
    assert unresolved.returncode == 0, unresolved.stderr
    assert re.search(r"derived\.train_config\s+\?\s+# env INVOKE_TRAIN_CONFIG: train\.config: unknown placeholder "
                     r"\{nosuch\}", unresolved.stdout), unresolved.stdout

    monkeypatch.setenv("INVOKE_TRAIN_CONFIG", "train_configs/debug_cpu.toml")
    assert load_config(REPO_ROOT, flags={"machine": "jpb"}).recipe_path() == recipes / "debug_cpu.toml"


def _variant(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = (REPO_ROOT / "train_configs" / "gpu_smoke.toml").read_text()
    assert old in text
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace(old, new))
    return path


def test_bad_parallelism_or_checkpointing_fails_before_submission_in_one_line(dataset: Path, tmp_path: Path) -> None:
    cases = [
        (_variant(tmp_path, "placeholder", '"{nodes}"', '"{node}"'), [],
         '[parallelism] data_parallel_replicate_degree = \'{node}\': unknown placeholder (known: "{nodes}"'),
        (_variant(tmp_path, "degrees", '"{procs_per_node}"', "8"), ["--procs-per-node", "4"],
         "[parallelism] data_parallel_shard_degree = 8 does not fit 4 processes"),
        (_variant(tmp_path, "ac_mode", 'mode = "selective"', 'mode = "op"'), [],
         "[activation_checkpoint] mode = 'op': use one of selective, full, memory-budget, none"),
        (_variant(tmp_path, "ac_key", 'mode = "selective"', 'mode = "selective"\nselective_ac_option = "op"'), [],
         "unexpected keyword argument 'selective_ac_option'"),
    ]
    for toml, args, expected in cases:
        result = run_invoke("train.submit", "--config", str(toml), "--dataset", str(dataset), *args, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stdout + result.stderr
        assert expected in lines[0] and str(toml) in lines[0], lines[0]
        assert "submitted job" not in result.stdout
