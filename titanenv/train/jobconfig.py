"""The TOML job description: our [model] and [data] sections, TorchTitan's own options for the rest.

``[model]`` picks a llama3 flavor of TorchTitan or a custom shape, and the
attention; ``[data]`` names the datasets (weights), the validation datasets
(``valid_datasets``, ``valid_weights``: what TorchTitan's ``[validator]``
reads, through our loader) and the tokenizer directory. Every other section
is TorchTitan's: ``[training] steps = 40`` becomes ``--training.steps 40``
on its command line, so TorchTitan itself checks every key and value, and a
task flag that changes a field just changes that argument.

Two exceptions, both filled in before TorchTitan sees them:

- ``[parallelism]`` degrees may be ``"{nodes}"`` or ``"{procs_per_node}"``
  (also ``"{world_size}"``), replaced by the job's numbers when it is
  prepared: HSDP, sharded inside a node and replicated across nodes, is
  ``data_parallel_replicate_degree = "{nodes}"`` with
  ``data_parallel_shard_degree = "{procs_per_node}"``.
- ``[activation_checkpoint]`` is read by our config registry, not passed as
  options: TorchTitan selects the policy with a positional subcommand
  (``activation-checkpoint:full``) that must follow every other option.
  ``mode`` picks it (selective, full, memory-budget, none); the other keys
  are that policy's own fields.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from titanenv.errors import TitanEnvError

ENV_VAR = "TITANENV_TRAIN_TOML"
OURS = ("model", "data")
# TorchTitan sections our registry builds itself instead of passing them as options.
BUILT_BY_REGISTRY = ("activation_checkpoint",)
# What "{name}" may stand for in [parallelism].
PARALLELISM_PLACEHOLDERS = ("nodes", "procs_per_node", "world_size")
MODEL_KEYS = {"flavor", "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "attention", "multiple_of"}
DATA_KEYS = {"datasets", "weights", "valid_datasets", "valid_weights", "tokenizer", "seed", "num_workers"}


class JobConfigError(TitanEnvError):
    """The TOML job description is missing, malformed or names unknown keys."""


@dataclass
class JobConfig:
    path: Path
    model: dict[str, Any]
    data: dict[str, Any]
    torchtitan: dict[str, dict[str, Any]] = field(default_factory=dict)

    def flags(self) -> list[str]:
        """TorchTitan's command-line options for every section but ours."""
        words: list[str] = []
        for section, values in self.torchtitan.items():
            if section in BUILT_BY_REGISTRY:
                continue
            for key, value in values.items():
                if section == "optimizer" and key == "lr":
                    continue  # ours: TorchTitan keeps a learning rate per parameter group
                if isinstance(value, bool):
                    # tyro's boolean flags: --section.key / --section.no-key
                    words.append(f"--{section}.{key}" if value else f"--{section}.no-{key}")
                else:
                    words += [f"--{section}.{key}", *_cli_values(value)]
        return words

    def get(self, dotted: str, default: Any = None) -> Any:
        section, _, key = dotted.partition(".")
        source = {"model": self.model, "data": self.data}.get(section) or self.torchtitan.get(section, {})
        return source.get(key, default)

    def set(self, dotted: str, value: Any) -> None:
        section, _, key = dotted.partition(".")
        if section == "model":
            self.model[key] = value
        elif section == "data":
            self.data[key] = value
        else:
            self.torchtitan.setdefault(section, {})[key] = value

    def fill_parallelism(self, values: dict[str, int]) -> dict[str, int]:
        """Replace ``"{nodes}"``-style degrees in [parallelism] by numbers; returns what was filled."""
        filled = {}
        for key, value in self.torchtitan.get("parallelism", {}).items():
            if not isinstance(value, str) or not value.startswith("{"):
                continue
            name = value.strip("{}")
            if value != f"{{{name}}}" or name not in values:
                known = ", ".join(f'"{{{n}}}"' for n in PARALLELISM_PLACEHOLDERS)
                raise JobConfigError(f"{self.path}: [parallelism] {key} = {value!r}: unknown placeholder (known: {known})")
            filled[key] = self.torchtitan["parallelism"][key] = int(values[name])
        return filled

    def to_toml(self) -> str:
        lines = [f"# Resolved from {self.path}"]
        for name, values in (("model", self.model), ("data", self.data), *self.torchtitan.items()):
            lines.append(f"\n[{name}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        return "\n".join(lines) + "\n"


def _cli_values(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def read(path: Path, expand: Callable[[str, str], str] | None = None) -> JobConfig:
    """Read and check a TOML job description; ``expand(value, key)`` fills {placeholders} in [data]."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobConfigError(f"{path}: no such training config (train.config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobConfigError(f"{path}: {exc}") from None
    for name in OURS:
        if not isinstance(raw.get(name), dict):
            raise JobConfigError(f"{path}: needs a [{name}] section")
    for name, known in (("model", MODEL_KEYS), ("data", DATA_KEYS)):
        unknown = sorted(set(raw[name]) - known)
        if unknown:
            raise JobConfigError(f"{path}: [{name}] {unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    others = {}
    for name, values in raw.items():
        if name in OURS:
            continue
        if not isinstance(values, dict):
            raise JobConfigError(f"{path}: {name}: expected a [{name}] section of TorchTitan options")
        others[name] = dict(values)
    data = dict(raw["data"])
    if expand is not None:
        data["datasets"] = [expand(str(p), "data.datasets") for p in data.get("datasets", [])]
        if "valid_datasets" in data:
            data["valid_datasets"] = [expand(str(p), "data.valid_datasets") for p in data["valid_datasets"]]
        if "tokenizer" in data:
            data["tokenizer"] = expand(str(data["tokenizer"]), "data.tokenizer")
    return JobConfig(path=path, model=dict(raw["model"]), data=data, torchtitan=others)


def read_resolved() -> JobConfig:
    """The resolved TOML a job runs with (named by $TITANENV_TRAIN_TOML)."""
    value = os.environ.get(ENV_VAR)
    if not value:
        raise JobConfigError(f"${ENV_VAR} is not set: start training with python -m titanenv.train RUN/train.toml")
    return read(Path(value))
