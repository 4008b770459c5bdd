"""env.hub-download for real with runtime none, without the Internet.

The Hub itself stands in as an endpoint that refuses every connection
(``HF_ENDPOINT=http://127.0.0.1:9``): a Hub id then fails at once, which shows
that the step went online (offline, the libraries would not even try). Local
datasets need no Hub: they are prepared into the same cache and read back
offline by a job's environment (``container.run``). The venv the step runs in
is this test interpreter's own (it holds datasets and huggingface_hub),
placed where paths.venv_dir says.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT, SHARED_DATA, run_invoke
from titanenv.envsetup.hubfetch import model_ignore_patterns

REFUSING_HUB = "http://127.0.0.1:9"
JSONL = SHARED_DATA / "corpus" / "wikitext2_valid_test.jsonl"
# The caller's own shell may be offline: the step must switch online for itself anyway.
OFFLINE_CALLER = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class Site:
    """A user config pointing project and scratch into tmp, with a venv at paths.venv_dir."""

    def __init__(self, root: Path) -> None:
        import getpass
        import platform

        self.config_path = root / "config.yaml"
        self.settings: dict = {"cluster": {"project_root": str(root / "project"), "scratch_root": str(root / "scratch")}}
        self.write()
        self.scratch = root / "scratch" / "trustllm" / getpass.getuser() / "torchtitan"
        self.hf_home = self.scratch / ".cache" / "huggingface"
        self.venv = self.scratch / f"env_{platform.machine()}"

    def write(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.settings))

    def with_venv(self) -> "Site":
        prefix = Path(sys.prefix)
        assert (prefix / "bin" / "activate").is_file(), f"run the tests with a venv's python (not {sys.executable})"
        self.venv.parent.mkdir(parents=True, exist_ok=True)
        self.venv.symlink_to(prefix, target_is_directory=True)
        return self

    def invoke(self, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
        return run_invoke("--search-root", str(REPO_ROOT), *args, cwd=cwd,
                          env={"INVOKE_USER_CONFIG": str(self.config_path), **(env or {})})


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_TOKEN_PATH", "HF_HOME", *OFFLINE_CALLER):
        monkeypatch.delenv(name, raising=False)
    return Site(tmp_path)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 1, f"expected failure:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def plan_parts(out: str) -> tuple[list[str], dict[str, str], list[str]]:
    """A --dry plan as (item lines, step environment, command argv)."""
    lines = out.splitlines()
    env_start = next(i for i, line in enumerate(lines) if line.startswith("environment of this step"))
    environment = dict(line.strip().split("=", 1) for line in lines[env_start + 1:] if line.startswith("  "))
    command = next(line for line in lines if line.startswith("command: ")).removeprefix("command: ")
    return lines[:env_start], environment, shlex.split(command)


def test_dry_plan_shows_each_kind_where_it_lands_the_online_environment_and_the_command(site: Site, tmp_path: Path) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    (cwd / "mine.jsonl").write_text('{"text": "x"}\n')
    out = ok(site.invoke(
        "env.hub-download", "--dry", "--model", "gpt2", "--tokenizer", "meta-llama/Llama-3.1-8B@v1.0",
        "--dataset", "wikitext:wikitext-103-raw-v1:train", "--dataset", "./mine.jsonl", "--metric", "accuracy",
        cwd=cwd, env=OFFLINE_CALLER,
    ))
    items, environment, argv = plan_parts(out)
    hub_cache = site.hf_home / "hub"
    assert "model gpt2: revision main; leaves out *.h5" in items[0] and items[0].endswith(f"-> {hub_cache}/models--gpt2")
    assert "*.py" in items[0].split("leaves out")[1]
    assert items[1].startswith("tokenizer meta-llama/Llama-3.1-8B@v1.0: revision v1.0; only tokenizer* ")
    assert items[1].endswith(f"-> {hub_cache}/models--meta-llama--Llama-3.1-8B")
    assert items[2] == (f"dataset wikitext:wikitext-103-raw-v1:train: revision main, config wikitext-103-raw-v1, "
                        f"split train -> {site.hf_home / 'datasets'} (Arrow)")
    assert items[3].startswith(f"dataset ./mine.jsonl: local json file {cwd / 'mine.jsonl'} -> ")
    assert items[4].startswith("metric accuracy: evaluate-metric/accuracy, revision main -> ")
    assert "trust_remote_code: off" in items
    # Online in this step, whatever the caller's shell says; every cache the jobs' one, under scratch.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert environment[name] == "0"
    assert environment["HF_HOME"] == str(site.hf_home)
    assert environment["HF_DATASETS_CACHE"] == str(site.hf_home / "datasets")
    assert environment["HF_HUB_CACHE"] == str(site.hf_home / "hub")
    # The venv's Python runs the step; each name is one argv word, the local path made absolute.
    assert str(site.venv / "bin" / "python") in argv
    tail = argv[argv.index(str(REPO_ROOT)) + 1:]
    assert "--trust-remote-code" not in tail
    names = [tail[i + 1] for i, word in enumerate(tail) if word in ("--model", "--tokenizer", "--dataset", "--metric")]
    assert names == ["gpt2", "meta-llama/Llama-3.1-8B@v1.0", "wikitext:wikitext-103-raw-v1:train",
                     str(cwd / "mine.jsonl"), "accuracy"]
    assert not site.scratch.exists(), "--dry created something"


def test_trust_remote_code_only_when_asked(site: Site) -> None:
    out = ok(site.invoke("env.hub-download", "--dry", "--model", "org/custom", "--metric", "someone/metric",
                         "--trust-remote-code"))
    items, _, argv = plan_parts(out)
    assert "*.py" not in items[0]
    assert "trust_remote_code: on" in items
    assert "--trust-remote-code" in argv
    # From the configuration as well.
    site.settings["env"] = {"hub": {"models": ["org/custom"], "trust_remote_code": True}}
    site.write()
    assert "--trust-remote-code" in plan_parts(ok(site.invoke("env.hub-download", "--dry")))[2]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "gpt2; rm -rf ~"], "--model 'gpt2; rm -rf ~': not a Hub id"),
        (["--model=-oops"], "--model '-oops': not a Hub id"),
        (["--tokenizer", "gpt2:default"], "--tokenizer 'gpt2:default': a tokenizer takes no config"),
        (["--dataset", "wikitext:$(id)"], "--dataset 'wikitext:$(id)': '$(id)' is not a config name"),
        (["--dataset", "c4:en:train+test"], "--dataset 'c4:en:train+test': 'train+test' is not a split name"),
        (["--dataset", "gpt2@../main"], "--dataset 'gpt2@../main': '../main' is not a revision"),
        (["--dataset", "./missing.jsonl"], "--dataset './missing.jsonl': no such file or directory"),
        (["--metric", "someone/metric"], "--metric 'someone/metric' is a community metric (someone/metric): "
                                         "loading it runs its code; pass --trust-remote-code"),
    ],
)
def test_a_bad_name_is_one_line_naming_the_option(site: Site, args: list[str], expected: str) -> None:
    lines = error_lines(site.invoke("env.hub-download", "--dry", *args))
    assert len(lines) == 1 and lines[0].startswith("error: " + expected), lines


def test_configured_names_are_checked_where_they_are_set(site: Site) -> None:
    lines = error_lines(site.invoke("env.hub-download", "--dry", env={"INVOKE_ENV_HUB_DATASETS": '["ok", "a b"]'}))
    assert len(lines) == 1 and lines[0].startswith("error: env INVOKE_ENV_HUB_DATASETS: env.hub.datasets: 'a b': "), lines
    lines = error_lines(site.invoke("env.hub-download", "--dry"))
    assert lines == ["error: nothing to download: name it with --model, --tokenizer, --dataset or --metric, "
                     "or list it under env.hub in your config"]
    # A configured local path is relative to this repository.
    site.settings["env"] = {"hub": {"datasets": ["./sample_data/corpus/openwebtext/valid.jsonl.zst"]}}
    site.write()
    items, _, _ = plan_parts(ok(site.invoke("env.hub-download", "--dry")))
    assert f"local json file {REPO_ROOT / 'sample_data/corpus/openwebtext/valid.jsonl.zst'}" in items[0]


def test_the_step_is_online_with_scratch_caches_and_a_hub_id_fails_fast_naming_it(site: Site) -> None:
    site.with_venv()
    result = site.invoke("env.hub-download", "--model", "gpt2", "--dataset", "wikitext:wikitext-103-raw-v1",
                         env={**OFFLINE_CALLER, "HF_ENDPOINT": REFUSING_HUB})
    lines = error_lines(result)
    # Offline, the libraries would refuse without connecting; here each item tried the endpoint.
    assert lines[:2] == [
        f"error: --model gpt2: cannot reach the Hub at {REFUSING_HUB} (ConnectError: [Errno 111] Connection refused)",
        f"error: --dataset wikitext:wikitext-103-raw-v1: cannot reach the Hub at {REFUSING_HUB} "
        "(ConnectError: [Errno 111] Connection refused)",
    ]
    assert lines[-1].startswith("error: downloading from the Hub failed (exit 1)")
    # What the libraries themselves saw in that process.
    assert (f"env.hub-download: huggingface_hub offline=False cache={site.hf_home / 'hub'}; "
            f"datasets offline=False cache={site.hf_home / 'datasets'}; trust_remote_code=off") in result.stdout
    # Everywhere else (a job's environment: container.run) the same caches are offline.
    probe = ("import huggingface_hub.constants as h, datasets.config as d; "
             "print(h.HF_HUB_OFFLINE, h.HF_HUB_CACHE, d.HF_HUB_OFFLINE, d.HF_DATASETS_CACHE)")
    out = ok(site.invoke("container.run", "--", "python", "-c", probe))
    assert out.split() == ["True", str(site.hf_home / "hub"), "True", str(site.hf_home / "datasets")]


def test_a_missing_venv_is_one_line(site: Site) -> None:
    lines = error_lines(site.invoke("env.hub-download", "--model", "gpt2"))
    assert lines == [f"error: no venv at {site.venv}; run `invoke env.setup` first"]


def test_a_local_dataset_lands_in_the_cache_and_a_job_reads_it_offline(site: Site) -> None:
    site.with_venv()
    out = ok(site.invoke("env.hub-download", "--dataset", str(JSONL), env={"HF_ENDPOINT": REFUSING_HUB}))
    rows = JSONL.read_text().splitlines()
    line = next(line for line in out.splitlines() if line.startswith(f"env.hub-download: dataset {JSONL} (local): "))
    where = Path(line.split(f"train {len(rows)} rows in ", 1)[1].split(";", 1)[0])
    assert where.is_relative_to(site.hf_home / "datasets"), line
    arrow = [p for p in where.iterdir() if p.suffix == ".arrow"]
    assert len(arrow) == 1
    written = arrow[0].stat().st_mtime_ns
    # A separate process in a job's environment (offline), with the call the line names.
    read = ("import datasets, json, sys; "
            "ds = datasets.load_dataset('json', data_files=sys.argv[1])['train']; "
            "print(json.dumps({'offline': datasets.config.HF_HUB_OFFLINE, 'files': [f['filename'] for f in ds.cache_files], "
            "'rows': ds.num_rows, 'first': ds[0]['text']}))")
    job = ok(site.invoke("container.run", "--", "python", "-c", read, str(JSONL), env={"HF_DATASETS_OFFLINE": "1"}))
    seen = json.loads(job.strip().splitlines()[-1])
    assert seen == {"offline": True, "files": [str(arrow[0])], "rows": len(rows), "first": json.loads(rows[0])["text"]}
    # Read from the cache, not prepared again.
    assert arrow[0].stat().st_mtime_ns == written


def test_a_model_download_leaves_out_duplicate_weights_and_code_unless_trusted() -> None:
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "modeling_x.py"]
    assert model_ignore_patterns(files, ["*.h5"], False) == ["*.h5", "*.bin", "*.pt", "*.pth", "*.py"]
    assert model_ignore_patterns(files, ["*.h5"], True) == ["*.h5", "*.bin", "*.pt", "*.pth"]
    # Without safetensors the PyTorch weights are what transformers loads.
    assert model_ignore_patterns(["config.json", "pytorch_model.bin"], [], True) == []


def test_in_a_docker_or_podman_container_the_step_gets_the_online_variables_on_its_command_line(site: Site) -> None:
    # They see only what --env gives them; Apptainer inherits the process environment the plan prints.
    out = ok(site.invoke("env.hub-download", "--dry", "--runtime", "podman", "--model", "gpt2"))
    _, environment, argv = plan_parts(out)
    given = {argv[i + 1] for i, word in enumerate(argv) if word == "--env"}
    assert {"HF_HUB_OFFLINE=0", "HF_DATASETS_OFFLINE=0", f"HF_HOME={site.hf_home}"} <= given
    assert not any(value.endswith("OFFLINE=1") for value in given)
    assert given == {f"{name}={value}" for name, value in environment.items()}
