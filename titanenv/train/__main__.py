"""``python -m titanenv.train RUN/train.toml [TorchTitan options]``: what torchrun starts on every rank.

``--check`` first: only parse the options with TorchTitan, exit 1 with one
``error:`` line if it refuses them (train.submit's check where the job runs).

Reads the resolved TOML, applies the CPU fixes where there is no GPU, and
runs TorchTitan's own ``torchtitan.train.main`` with our config registry and
the TOML's TorchTitan options (options given here override them).

First of all it takes over the stop signals (:mod:`titanenv.train.stop`), so
a request that comes while torch is still importing is kept. A job that
finds a checkpoint at or past ``training.steps`` ends at once, with status 0
(a link of a chain after the training is done).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def command_line(toml: Path, extra: list[str]) -> list[str]:
    from titanenv.train.jobconfig import read

    job = read(toml)
    return ["--module", "titanenv.train.registry", "--config", "from_toml", *job.flags(), *extra]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    check = bool(argv) and argv[0] == "--check"
    if check:
        argv = argv[1:]
    else:
        from titanenv.train import stop

        stop.install()
    if not argv or argv[0].startswith("-"):
        print("usage: python -m titanenv.train [--check] RUN/train.toml [TorchTitan options]", file=sys.stderr)
        return 2
    toml = Path(argv[0]).resolve()
    from titanenv.errors import TitanEnvError
    from titanenv.train.jobconfig import ENV_VAR

    os.environ[ENV_VAR] = str(toml)
    try:
        args = command_line(toml, argv[1:])
        if check:
            _check(toml, argv[1:])
            return 0
        _check_datasets(toml)
    except TitanEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from titanenv.train import cpu

    if cpu.needed():
        cpu.apply()
    from torchtitan.config import ConfigManager

    resolved = ConfigManager().parse_args(args)
    if os.environ.get("RANK", "0") == "0":
        _record_what_runs(toml, resolved)
    import torchtitan.train

    done = finished(resolved)
    if done is not None:
        print(f"[titanenv] training is done: checkpoint step-{done[0]} reaches training.steps = {done[1]}; "
              "nothing to train", file=sys.stderr, flush=True)
        return 0
    sys.argv = ["torchtitan.train", *args]
    torchtitan.train.main()
    return 0


def _check_datasets(toml: Path) -> None:
    """The datasets, checked again where the job runs: one may have been written by a job it followed."""
    from titanenv.train.job import check_data
    from titanenv.train.jobconfig import read

    check_data(read(toml))


def _record_what_runs(toml: Path, resolved) -> None:  # noqa: ANN001 - TorchTitan's Trainer.Config
    """Print and keep versions, container, commits and TorchTitan's resolved configuration (rank 0)."""
    import json

    from titanenv.train import provenance

    as_data = json.loads(json.dumps(resolved.to_dict(), default=str))
    provenance.record(toml, as_data, echo=lambda line: print(line, flush=True))


def finished(config) -> tuple[int, int] | None:  # noqa: ANN001 - TorchTitan's Trainer.Config
    """``(latest checkpoint step, training.steps)`` when that checkpoint leaves nothing to train.

    The check TorchTitan's loop would make after loading the checkpoint,
    without building the model or loading anything.
    """
    checkpoint, steps = config.checkpoint, config.training.steps
    if not checkpoint.enable or checkpoint.load_step != -1 or steps < 0:
        return None
    from titanenv.train.checkpoints import latest_readable

    # Only a checkpoint the run could load counts: a damaged last one is trained again.
    latest = latest_readable(Path(config.dump_folder) / checkpoint.folder)
    return (latest, steps) if latest >= steps else None


def _check(toml: Path, extra: list[str]) -> None:
    """Parse the options with TorchTitan only; raises TrainError if it refuses them."""
    from titanenv.train.job import Prepared, validate_with_torchtitan
    from titanenv.train.jobconfig import read

    # The dump folder travels in ``extra`` (--dump_folder ...), as torchrun passes it.
    prepared = Prepared(job=read(toml), name=toml.stem, dump_folder=Path("."), text="", extra=extra)
    validate_with_torchtitan(prepared, toml)


if __name__ == "__main__":
    sys.exit(main())
