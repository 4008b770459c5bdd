"""Small file helpers every part of the library shares (standard library only).

Modules that run inside the container with its bare Python
(:mod:`titanenv.envsetup.inside`) import them too, so nothing here may
import beyond the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def record_text(data: dict[str, Any]) -> str:
    """JSON with one top-level key per line, each value compact.

    Readable with a glance (and ``python -m json.tool``), and written by
    json's C encoder, which ``indent=`` would turn off.
    """
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in data.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write; renamed over ``path`` when the block succeeds.

    The rename is atomic: readers see the old file or the whole new one. A
    symbolic link at ``path`` is replaced, not followed. On any failure (a
    full disk, Ctrl-C) the temporary file is removed and ``path`` is as it was.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` all at once or not at all (see :func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as :func:`record_text` to ``path`` all at once or not at all."""
    write_text_atomic(path, record_text(data))


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def human_size(n: float) -> str:
    """A byte count the way people read it: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
