"""Which checkpoints of an experiment a run can resume from.

TorchTitan resumes from the newest ``step-N`` folder holding a ``.metadata``
file, readable or not: a truncated one (a full disk, a job killed while
writing) made every resume die in ``UnpicklingError``. Here a checkpoint
counts only when its metadata can be read; a newer one that cannot is set
aside under a name TorchTitan neither loads nor purges
(``damaged-at-N.<UTC time>``), never deleted, and the run resumes from the
newest readable one, saying in one line which one it skipped and why.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

_STEP = re.compile(r"step-(\d+)")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    problem: str | None  # why it cannot be resumed from; None when it can


def _problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be read, or None (DCP metadata read; an HF index parsed)."""
    metadata = path / ".metadata"
    if metadata.is_file():
        from torch.distributed.checkpoint import FileSystemReader

        try:
            FileSystemReader(str(path)).read_metadata()
        except Exception as exc:  # noqa: BLE001 - any failure to unpickle means it cannot be resumed from
            return f"its .metadata cannot be read ({type(exc).__name__}: {str(exc)[:80]})"
        return None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"its model.safetensors.index.json cannot be read ({exc})"
        return None
    return "it has no .metadata"


def checkpoints(folder: Path) -> list[Checkpoint]:
    """The ``step-N`` folders TorchTitan would consider, newest first, each with its problem if any."""
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = _STEP.fullmatch(path.name)
        if match and path.is_dir() and ((path / ".metadata").is_file()
                                        or (path / "model.safetensors.index.json").is_file()):
            found.append(Checkpoint(int(match.group(1)), path, _problem(path)))
    return sorted(found, key=lambda c: c.step, reverse=True)


def latest_readable(folder: Path) -> int:
    """The newest step a run can resume from; -1 for none."""
    return next((c.step for c in checkpoints(folder) if c.problem is None), -1)


def set_aside_unreadable(folder: Path, echo) -> list[Path]:  # noqa: ANN001
    """Rename the checkpoints newer than the newest readable one out of TorchTitan's way; return the new names."""
    moved = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    readable = latest_readable(folder)
    for checkpoint in checkpoints(folder):
        if checkpoint.problem is None:
            break
        target = checkpoint.path.with_name(f"damaged-at-{checkpoint.step}.{stamp}")
        os.rename(checkpoint.path, target)
        moved.append(target)
        where = f"step-{readable}" if readable >= 0 else "the start"
        echo(f"skipping checkpoint {checkpoint.path}: {checkpoint.problem}; kept as {target.name}, "
             f"resuming from {where}")
    return moved
