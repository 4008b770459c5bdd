"""Plain helpers for tests (fixtures live in conftest.py and tests/fixtures/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.env.repos import git, make_repo, release
from tests.env.tiny_backend import make_wheel
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


def submitted_ids(stdout: str) -> list[str]:
    """Job ids from the `submitted job N: ...` lines of a submission."""
    return [line.split()[2].rstrip(":") for line in stdout.splitlines() if line.startswith("submitted job ")]


def invoke_ok(*args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = run_invoke(*args, cwd=cwd, env=env, timeout=120)
    assert result.returncode == 0, f"invoke {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The task failed with status 1 and exactly one `error: ...` line on stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- env.setup against local repositories and a wheel index -------------------------


class World:
    """Upstream repositories, a wheel index, and a user config pointing everything into tmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources = root / "sources"
        self.wheels = root / "wheels"
        self.wheels.mkdir(parents=True)
        make_wheel(self.wheels, "tinydep", "1.0", {"tinydep/__init__.py": "VALUE = 42\n"})
        make_wheel(self.wheels, "tinyextra", "2.0", {"tinyextra/__init__.py": "NAME = 'extra'\n"})
        self.alpha = make_repo(self.sources / "alpha", "alpha", "1.0", deps=["tinydep"])
        self.beta_upstream = make_repo(self.sources / "beta-upstream", "beta", "1.0")
        # The fork: upstream's history plus a branch of its own.
        self.beta_fork = self.sources / "beta-fork"
        subprocess.run(["git", "clone", "--quiet", str(self.beta_upstream), str(self.beta_fork)], check=True)
        git(self.beta_fork, "checkout", "--quiet", "-b", "ours")
        release(self.beta_fork, "beta", "1.1")
        self.config_path = root / "config.yaml"
        self.settings = {
            "cluster": {"project_root": str(root / "project"), "scratch_root": str(root / "scratch")},
            "env": {
                "python": sys.executable,
                "repos": [
                    {"name": "alpha", "uri": str(self.alpha), "ref": "v1.0"},
                    {"name": "beta", "uri": str(self.beta_fork), "ref": "ours", "upstream": str(self.beta_upstream),
                     "editable": True},
                ],
                "pip_packages": ["tinyextra==2.0"],
                "build_packages": [],
                "project": {"install": False},
                # "Online" here means the local wheel index instead of PyPI.
                "pip_args": ["--no-index", "--find-links", str(self.wheels)],
                "download_args": ["--no-index", "--find-links", str(self.wheels)],
            },
        }
        self.write()

    def write(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.settings))

    def invoke(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_invoke(*args, env={"INVOKE_USER_CONFIG": str(self.config_path), **(env or {})})

    @property
    def scratch(self) -> Path:
        return self.root / "scratch" / "trustllm" / _user() / "torchtitan"

    @property
    def repos(self) -> Path:
        return self.root / "project" / "trustllm" / _user() / "torchtitan" / "repos"

    @property
    def venv(self) -> Path:
        import platform

        return self.scratch / f"env_{platform.machine()}"

    def python(self, code: str) -> str:
        done = subprocess.run([str(self.venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def _user() -> str:
    import getpass

    return getpass.getuser()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"expected failure:\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


# The shared corpus and tokenizers data.preprocess tests run on (sample_data/README.md).
OWT = SHARED_DATA / "corpus" / "openwebtext_1000.jsonl"
WIKI = SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"
GPT2 = SHARED_DATA / "tokenizers" / "gpt2"
NEOX = SHARED_DATA / "tokenizers" / "gpt-neox-20b-pii-dolma"


def preprocess(*args: str, output: Path, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """`invoke data.preprocess --output OUTPUT ARGS...` as a user runs it."""
    return run_invoke("data.preprocess", "--output", str(output), *args, cwd=cwd)


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``result``, after asserting it exited 0 (its output is the message otherwise)."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def pair_bytes(prefix: Path) -> tuple[bytes, bytes]:
    """The bytes of an indexed dataset's ``.bin`` and ``.idx``, to compare two of them."""
    from titanenv.data import indexed

    return indexed.bin_path(prefix).read_bytes(), indexed.idx_path(prefix).read_bytes()


def preprocess_mib_chunks(corpus: Path, output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """data.preprocess of ``corpus`` with GPT-2 in 1 MiB chunks (resumes where an earlier run stopped)."""
    return preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--chunk-mb", "1", *args, output=output)


def corpus_and_reference(folder: Path) -> tuple[Path, Path]:
    """The shared corpus four times over (18 chunks of 1 MiB), and its dataset made by one uninterrupted run.

    What an interrupted run of it must end up byte-identical to once resumed.
    """
    corpus = folder / "corpus.jsonl"
    corpus.write_bytes(OWT.read_bytes() * 4)
    reference = folder / "straight" / "train"
    succeeded(preprocess_mib_chunks(corpus, reference))
    return corpus, reference


def restored_titan_model(model: dict, checkpoint: Path):
    """TorchTitan's model of a TOML's ``[model]`` on CPU, weights restored from ``checkpoint`` with DCP.

    Written here, not taken from the product (``research.export.load_model``):
    tests compare what the product computes against a model restored on their own.
    """
    import torch
    import torch.distributed.checkpoint as dcp

    from titanenv.train.registry import model_spec

    with torch.device("meta"):
        titan = model_spec(model).model.build()
    titan.to_empty(device="cpu")
    with torch.no_grad():
        titan.init_states(buffer_device=torch.device("cpu"))
    state = titan.state_dict()
    dcp.load(state, checkpoint_id=str(checkpoint))
    titan.load_state_dict(state)
    return titan.eval()
