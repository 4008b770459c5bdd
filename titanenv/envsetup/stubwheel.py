"""Metadata-only wheels: a distribution that is installed in the container, shown to pip's resolver.

The container's torch (``2.13.0a0+...nv26.7...``) is on no index, yet pip
must resolve against it: ``env.download`` (``pip download`` ignores what is
installed) and the stack check. A wheel that holds only its ``METADATA`` of
that exact version, given with ``--find-links``, stands in for it; nothing
ever installs it (set-up keeps it out of the offline bundle).
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path
from typing import Sequence

GENERATOR = "titanenv-stub"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def metadata_wheel(directory: Path, name: str, version: str, requires: Sequence[str] = ()) -> Path:
    """Write ``<name>-<version>-py3-none-any.whl`` with metadata and nothing else; return its path."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    meta = "".join(f"{line}\n" for line in
                   ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                    *(f"Requires-Dist: {req}" for req in requires)])
    entries = {
        f"{info}/METADATA": meta.encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: {GENERATOR}\nRoot-Is-Purelib: true\nTag: py3-none-any\n".encode(),
    }
    record = [_record_line(path, data) for path, data in entries.items()] + [f"{info}/RECORD,,"]
    entries[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = Path(directory) / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for member, data in entries.items():
            whl.writestr(member, data)
    return path


def is_stub(path: Path) -> bool:
    """Whether ``path`` is a wheel written by :func:`metadata_wheel`."""
    try:
        with zipfile.ZipFile(path) as whl:
            return any(n.endswith(".dist-info/WHEEL") and f"Generator: {GENERATOR}".encode() in whl.read(n)
                       for n in whl.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
