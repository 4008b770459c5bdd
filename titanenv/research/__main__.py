"""``python -m titanenv.research export ...``: what an export job runs (research.export --submit).

Paths arrive resolved; the latest checkpoint is looked up when the job
starts (a job queued behind training exports what training left). Errors
are one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m titanenv.research")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="a checkpoint to a Hugging Face directory")
    export.add_argument("--checkpoint-folder", type=Path, required=True)
    export.add_argument("--toml", type=Path, required=True)
    export.add_argument("--step", type=int)
    export.add_argument("--output", type=Path)
    export.add_argument("--dtype", required=True)
    export.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    from titanenv.errors import TitanEnvError
    from titanenv.research.export import ExportRequest, export as run_export
    from titanenv.train.jobconfig import read

    try:
        run_export(ExportRequest(checkpoint_folder=args.checkpoint_folder, step=args.step, job=read(args.toml),
                                 output=args.output, dtype=args.dtype, overwrite=args.overwrite),
                   echo=lambda line: print(line, flush=True))
    except TitanEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
