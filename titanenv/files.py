"""Small file helpers every part of the library shares (no dependencies beyond the standard library)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def record_text(data: dict[str, Any]) -> str:
    """JSON with one top-level key per line, each value compact.

    Readable with a glance (and ``python -m json.tool``), and written by
    json's C encoder, which ``indent=`` would turn off.
    """
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in data.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``.

    A symbolic link at ``path`` is replaced, not followed. On any failure
    (a full disk, Ctrl-C) the temporary file is removed and ``path`` is as
    it was.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(record_text(data), encoding="utf-8")
        # The rename is atomic: readers see the old file or the whole new one.
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
