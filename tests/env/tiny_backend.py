"""A PEP 517/660 build backend in one standard-library file, for test repositories.

Copied into the git repositories the tests make (as ``_backend.py``, named by
``backend-path``), so pip can build and install them editable with no
setuptools and no index: set-up and offline tests then need no network.
``make_wheel`` also writes plain wheels for the tests' local wheel directory.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tomllib
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _metadata(name: str, version: str, requires: list[str]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {req}" for req in requires]
    return "\n".join(lines) + "\n"


def make_wheel(directory: str | os.PathLike, name: str, version: str, files: dict[str, str],
               requires: list[str] | None = None) -> str:
    """Write ``<name>-<version>-py3-none-any.whl`` holding ``files`` (path -> text); return its file name."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    entries = {path: text.encode() for path, text in files.items()}
    entries[f"{info}/METADATA"] = _metadata(name, version, requires or []).encode()
    entries[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tiny_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [_record_line(path, data) for path, data in entries.items()] + [f"{info}/RECORD,,"]
    entries[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    filename = f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(Path(directory) / filename, "w") as whl:
        for path, data in entries.items():
            whl.writestr(path, data)
    return filename


def _project() -> tuple[str, str, list[str]]:
    data = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    return data["name"], data["version"], list(data.get("dependencies", []))


def get_requires_for_build_wheel(config_settings=None):
    return []


get_requires_for_build_editable = get_requires_for_build_sdist = get_requires_for_build_wheel


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name, version, requires = _project()
    info = Path(metadata_directory) / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(_metadata(name, version, requires))
    return info.name


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name, version, requires = _project()
    package = name.replace("-", "_")
    files = {p.as_posix(): p.read_text() for p in Path(package).rglob("*.py")}
    return make_wheel(wheel_directory, name, version, files, requires)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name, version, requires = _project()
    pth = {f"_{name.replace('-', '_')}_editable.pth": str(Path.cwd()) + "\n"}
    return make_wheel(wheel_directory, name, version, pth, requires)


def build_sdist(sdist_directory, config_settings=None):
    name, version, _ = _project()
    base = f"{name.replace('-', '_')}-{version}"
    path = Path(sdist_directory) / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for item in Path(".").rglob("*"):
            if ".git" not in item.parts and item.is_file():
                tar.add(item, arcname=f"{base}/{item.as_posix()}")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        meta = _metadata(name, version, []).encode()
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return path.name
