"""``env.hub-download``: HuggingFace Hub models, tokenizers, datasets and metrics into the scratch caches.

Compute nodes have no internet, so what jobs load from the Hub is fetched
beforehand on a login node. The download runs where jobs run (the active
container, or the host venv for runtime ``none``) through the same command
line as ``container.run``, with the venv's Python executing
:mod:`.hubfetch`; its environment is the jobs' (every cache under
``paths.cache_dir``) except that the HF libraries are online, in that one
process only. Jobs then find everything offline in the same caches.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from titanenv.config import HF_OFFLINE_ENVIRONMENT, Config
from titanenv.envsetup.hubfetch import BOOT, KINDS, Item, local_format, parse, trust_problem
from titanenv.errors import TitanEnvError

# The download step's opposite of HF_OFFLINE_ENVIRONMENT.
HF_ONLINE_ENVIRONMENT: dict[str, str] = {name: "0" for name in HF_OFFLINE_ENVIRONMENT}


class HubError(TitanEnvError):
    """A name to download is wrong, or the download step failed."""


@dataclass(frozen=True)
class HubPlan:
    """What ``env.hub-download`` does: the items, the command line and the environment of its one step."""

    items: list[Item]
    trust_remote_code: bool
    # The command as run on the host (module prelude and container runtime included).
    argv: list[str]
    # Every variable the step sets where it runs (inside the container), values as set.
    environment: dict[str, str]
    # The same, of the whole host process that runs argv.
    process_env: dict[str, str]
    venv: Path
    where: str


def _token_file() -> Path | None:
    """The login token (``hf auth login``) of the caller's own HF home, which the scratch HF_HOME hides."""
    if os.environ.get("HF_TOKEN_PATH"):
        path = Path(os.environ["HF_TOKEN_PATH"]).expanduser()
    else:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
        path = Path(home).expanduser() / "token"
    return path if path.is_file() else None


def step_environment(config: Config) -> dict[str, str]:
    """What the download step sets: the jobs' environment (caches under scratch), HF online, Hub endpoint and token file."""
    from titanenv import container

    env = {k: v for k, v in container.container_environment(config).items() if k not in HF_OFFLINE_ENVIRONMENT}
    env.update(_online_extras())
    return env


def _online_extras() -> dict[str, str]:
    extras = dict(HF_ONLINE_ENVIRONMENT)
    if os.environ.get("HF_ENDPOINT"):
        extras["HF_ENDPOINT"] = os.environ["HF_ENDPOINT"]
    token = _token_file()
    if token is not None:
        extras["HF_TOKEN_PATH"] = str(token)
    return extras


def requested_items(config: Config, given: Mapping[str, Sequence[str] | None],
                    trust_remote_code: bool) -> list[Item]:
    """The items to fetch: per kind, the flag's values (``given``), else ``env.hub.<kind>s``.

    A bad name is one line naming the flag (``--dataset``) or the setting and
    where it was set; local dataset paths must exist. Flag paths are relative
    to the working directory, configured ones to this repository.
    """
    hub = config.settings.env.hub
    items: list[Item] = []
    for kind in KINDS:
        texts = list(given.get(kind) or [])
        key = f"env.hub.{kind}s"
        if texts:
            labels = [f"--{kind}"] * len(texts)
            base = os.getcwd()
        else:
            texts = list(getattr(hub, f"{kind}s"))
            labels = [f"{config.origin(key)}: {key}[{index}]" for index in range(len(texts))]
            base = str(config.repo_root)
        for label, text in zip(labels, texts):
            try:
                item = parse(kind, text, base=base)
            except ValueError as exc:
                raise HubError(f"{label} {exc}") from None
            problem = trust_problem(item, trust_remote_code) or _local_problem(item)
            if problem:
                raise HubError(f"{label} {problem}")
            items.append(item)
    if not items:
        raise HubError("nothing to download: name it with --model, --tokenizer, --dataset or --metric, "
                       "or list it under env.hub in your config")
    return items


def _local_problem(item: Item) -> str | None:
    if item.path is None:
        return None
    if not os.path.exists(item.path):
        return f"{item.text!r}: no such file or directory ({item.path})"
    if local_format(item.path) == "":
        return (f"{item.text!r}: not a file type datasets prepares (.jsonl, .json, .csv, .tsv, .parquet, .txt, "
                ".arrow, compressed too) nor a directory")
    return None


def script_argv(config: Config, items: Sequence[Item], trust_remote_code: bool) -> list[str]:
    """The step's command in the container: the venv's Python running :mod:`.hubfetch`, every name one word."""
    hub = config.settings.env.hub
    argv = [str(config.paths.venv_dir / "bin" / "python"), "-c", BOOT, str(config.repo_root)]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    kinds = {item.kind for item in items}
    if "model" in kinds:
        argv += [word for pattern in hub.model_ignore for word in ("--ignore", pattern)]
    if "tokenizer" in kinds:
        argv += [word for pattern in hub.tokenizer_files for word in ("--tokenizer-file", pattern)]
    for item in items:
        argv += [f"--{item.kind}", item.path or item.text]
    return argv


def plan(config: Config, given: Mapping[str, Sequence[str] | None], *, trust_remote_code: bool | None = None) -> HubPlan:
    """Check the names and build the one command that downloads them (nothing runs)."""
    from titanenv import container

    trust = config.settings.env.hub.trust_remote_code if trust_remote_code is None else trust_remote_code
    items = requested_items(config, given, trust)
    inner = script_argv(config, items, trust)
    invocation = container.run_invocation(config, inner, hf_offline=False, extra_env=_online_extras())
    argv = invocation.argv
    if container.uses_container(config):
        argv = container.host_shell(config).wrap(argv)
        where = f"{config.settings.cluster.container_runtime} container {container.active_image(config)}"
    else:
        where = "the host (runtime none)"
    return HubPlan(items=items, trust_remote_code=trust, argv=argv, environment=step_environment(config),
                   process_env=invocation.env, venv=config.paths.venv_dir, where=where)


def _destination(item: Item, env: Mapping[str, str]) -> str:
    if item.kind in ("model", "tokenizer"):
        return f"{env['HF_HUB_CACHE']}/models--{item.repo_id.replace('/', '--')}"
    if item.kind == "dataset":
        return f"{env['HF_DATASETS_CACHE']} (Arrow)"
    return f"{env['HF_MODULES_CACHE']}/evaluate_modules"


def _what(item: Item, hub_ignore: Sequence[str], tokenizer_files: Sequence[str], trust: bool) -> str:
    if item.kind == "model":
        left_out = [*hub_ignore, "*.bin/*.pt/*.pth where .safetensors exist"] + ([] if trust else ["*.py"])
        return f"revision {item.revision or 'main'}; leaves out {' '.join(left_out)}"
    if item.kind == "tokenizer":
        return f"revision {item.revision or 'main'}; only {' '.join([*tokenizer_files, *(['*.py'] if trust else [])])}"
    if item.kind == "dataset":
        if item.path is not None:
            builder = local_format(item.path)
            return f"local {'directory' if builder is None else builder + ' file'} {item.path}"
        return (f"revision {item.revision or 'main'}, config {item.config or '(default)'}, "
                f"split {item.split or '(all)'}")
    return f"{item.metric_repo}, revision {item.revision or 'main'}"


def describe(config: Config, hub_plan: HubPlan) -> list[str]:
    """The lines ``env.hub-download --dry`` prints: each item, where it lands, the step's environment and command."""
    hub = config.settings.env.hub
    env = hub_plan.environment
    lines = [f"{item.kind} {item.text}: {_what(item, hub.model_ignore, hub.tokenizer_files, hub_plan.trust_remote_code)}"
             f" -> {_destination(item, env)}" for item in hub_plan.items]
    lines.append(f"trust_remote_code: {'on' if hub_plan.trust_remote_code else 'off'}")
    venv_note = "" if (hub_plan.venv / "bin" / "activate").is_file() else " (not there yet: run invoke env.setup first)"
    lines.append(f"runs in: {hub_plan.where}, with the venv {hub_plan.venv}{venv_note}")
    lines.append("environment of this step (HF online here only; jobs run with "
                 + " ".join(f"{k}={v}" for k, v in HF_OFFLINE_ENVIRONMENT.items()) + " and these caches):")
    lines += [f"  {name}={value}" for name, value in sorted(env.items())]
    lines.append("command: " + shlex.join(hub_plan.argv))
    return lines


def _check_ready(config: Config) -> None:
    from titanenv import container

    venv = config.paths.venv_dir
    if not (venv / "bin" / "activate").is_file():
        raise container.NoVenv(f"no venv at {venv}; run `invoke env.setup` first")
    if container.uses_container(config) and not container.images(config).slot_state("active").present:
        raise HubError(f"no active container ({container.active_image(config)}); run `invoke container.build` "
                       "and `invoke container.activate` first")


def download(config: Config, given: Mapping[str, Sequence[str] | None], *, trust_remote_code: bool | None = None,
             dry: bool = False, say: Callable[[str], None] = print) -> HubPlan:
    """Fetch the items into the caches (``dry``: print the plan and do nothing)."""
    import subprocess

    from titanenv import container

    hub_plan = plan(config, given, trust_remote_code=trust_remote_code)
    if dry:
        for line in describe(config, hub_plan):
            say(line)
        return hub_plan
    _check_ready(config)
    if container.uses_container(config):
        container.host_shell(config).check(hub_plan.process_env)
    code = subprocess.run(hub_plan.argv, env=hub_plan.process_env).returncode
    if code != 0:
        raise HubError(f"downloading from the Hub failed (exit {code}); the lines above name what failed")
    say(f"done: jobs find these offline in {hub_plan.environment['HF_HOME']}")
    return hub_plan


__all__ = ["HF_ONLINE_ENVIRONMENT", "HubError", "HubPlan", "describe", "download", "plan", "requested_items",
           "script_argv", "step_environment"]
