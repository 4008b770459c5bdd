"""Which experiment, TOML and checkpoint a research task works on.

An experiment is a training name: TorchTitan's outputs (checkpoints,
TensorBoard events, structured logs) lie in ``{checkpoint_dir}/<name>``, and
every ``train.run`` / ``train.submit`` with that name resumes there. The
model's shape comes from the TOML the newest training run of that name
resolved (kept beside its run record), so an export builds exactly the model
that was trained; without such a run, from ``train.config``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from titanenv.config import Config
from titanenv.errors import TitanEnvError
from titanenv.train.jobconfig import JobConfig, read

_STEP_DIR = re.compile(r"^step-(\d+)$")


class ResearchError(TitanEnvError):
    """A research task cannot find or use its checkpoint, export or metrics."""


@dataclass(frozen=True)
class Experiment:
    name: str
    dump_folder: Path
    job: JobConfig  # the TOML the model is built from

    @property
    def checkpoint_folder(self) -> Path:
        """Where TorchTitan writes ``step-N`` (``[checkpoint] folder``, default ``checkpoint``)."""
        return self.dump_folder / str(self.job.get("checkpoint.folder", "checkpoint") or "checkpoint")

    @property
    def tokenizer(self) -> Path:
        value = self.job.data.get("tokenizer")
        if not value:
            raise ResearchError(f"{self.job.path}: [data] names no tokenizer directory")
        return Path(value)


def read_toml(config: Config, path: Path) -> JobConfig:
    """A TOML job description with its placeholders filled as train.run fills them."""
    from titanenv.train.job import read_recipe

    return read_recipe(config, path)


def training_runs(config: Config, dump_folder: Path) -> list:
    """Training run records (newest first) that wrote into ``dump_folder``."""
    from titanenv.runs import list_runs

    return [record for record in list_runs(config, "train")
            if (record.data.get("extra") or {}).get("train", {}).get("dump_folder") == str(dump_folder)]


def resolved_toml(record) -> Path | None:
    """The TOML a training run ran with: ``train.toml`` in (train.run) or beside (train.submit) its directory."""
    for path in (record.run_dir / "train.toml", record.run_dir.with_name(f"{record.run_dir.name}.train.toml")):
        if path.is_file():
            return path
    return None


def find_experiment(config: Config, toml: str | None = None) -> Experiment:
    """The experiment named by ``train.name`` (default: the TOML's file name) and the TOML of its model.

    ``toml`` (a flag) wins; else the newest training run of that name; else ``train.config``.
    """

    settings = config.settings.train
    configured = config.recipe_path()
    name = settings.name or configured.stem
    dump_folder = config.paths.checkpoint_dir / name
    if toml:
        return Experiment(name, dump_folder, read_toml(config, config.expand_path(toml, "--config")))
    for record in training_runs(config, dump_folder):
        path = resolved_toml(record)
        if path is not None:
            return Experiment(name, dump_folder, read(path))
    return Experiment(name, dump_folder, read_toml(config, configured))


def checkpoint_steps(folder: Path) -> list[int]:
    """Steps with a complete DCP checkpoint (``step-N/.metadata``) in ``folder``, ascending."""
    if not folder.is_dir():
        return []
    steps = []
    for entry in folder.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / ".metadata").is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def find_checkpoint(folder: Path, step: int | None = None) -> tuple[int, Path]:
    """``(step, folder/step-N)``: the latest checkpoint, or the one of ``step``; one-line errors otherwise."""
    steps = checkpoint_steps(folder)
    if not steps:
        raise ResearchError(f"{folder}: no checkpoint (step-N with .metadata) here; train with this name first "
                            "(train.run / train.submit --name), or give --name")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ResearchError(f"--step {step}: no checkpoint {folder / f'step-{step}'} (steps there: "
                            f"{', '.join(map(str, steps))})")
    return step, folder / f"step-{step}"
