"""``python -m titanenv.train RUN/train.toml [TorchTitan options]``: what torchrun starts on every rank.

``--check`` first: only parse the options with TorchTitan, exit 1 with one
``error:`` line if it refuses them (train.submit's check where the job runs).

Reads the resolved TOML, applies the CPU fixes where there is no GPU, and
runs TorchTitan's own ``torchtitan.train.main`` with our config registry and
the TOML's TorchTitan options (options given here override them).
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
    if os.environ.get("RANK", "0") == "0":
        _record_what_runs(toml, args)
    import torchtitan.train

    sys.argv = ["torchtitan.train", *args]
    torchtitan.train.main()
    return 0


def _check_datasets(toml: Path) -> None:
    """The datasets, checked again where the job runs: one may have been written by a job it followed."""
    from titanenv.train.job import check_data
    from titanenv.train.jobconfig import read

    check_data(read(toml))


def _record_what_runs(toml: Path, args: list[str]) -> None:
    """Print and keep versions, container, commits and TorchTitan's resolved configuration (rank 0)."""
    import json

    from torchtitan.config import ConfigManager

    from titanenv.train import provenance

    resolved = json.loads(json.dumps(ConfigManager().parse_args(args).to_dict(), default=str))
    provenance.record(toml, resolved, echo=lambda line: print(line, flush=True))


def _check(toml: Path, extra: list[str]) -> None:
    """Parse the options with TorchTitan only; raises TrainError if it refuses them."""
    from titanenv.train.job import Prepared, validate_with_torchtitan
    from titanenv.train.jobconfig import read

    # The dump folder travels in ``extra`` (--dump_folder ...), as torchrun passes it.
    prepared = Prepared(job=read(toml), name=toml.stem, dump_folder=Path("."), text="", extra=extra)
    validate_with_torchtitan(prepared, toml)


if __name__ == "__main__":
    sys.exit(main())
