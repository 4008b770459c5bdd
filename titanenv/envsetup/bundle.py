"""The offline bundle: wheels, repository bundles, and a manifest of checksums.

Layout under ``env.bundle_dir``::

    wheels/                 everything `pip download` fetched
    repos/<name>.bundle     git bundle of each pinned repository
    MANIFEST.json           sha256 of every file, and the pins it was made for
    SHA256SUMS              the same checksums for `sha256sum -c`
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from titanenv.errors import TitanEnvError
from titanenv.files import sha256_file, write_text_atomic

MANIFEST = "MANIFEST.json"
SUMS = "SHA256SUMS"


class BundleError(TitanEnvError):
    """The offline bundle is missing, incomplete or does not match the configuration."""


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    files: int
    wheels: int
    repos: Mapping[str, Mapping[str, str]]


def write_manifest(bundle_dir: Path, repos: Mapping[str, Mapping[str, str]], requirements: Sequence[str],
                   download_args: Sequence[str]) -> BundleSummary:
    """Checksum every file of the bundle into MANIFEST.json and SHA256SUMS."""
    files = {}
    for path in sorted(bundle_dir.rglob("*")):
        rel = path.relative_to(bundle_dir).as_posix()
        if path.is_file() and rel not in (MANIFEST, SUMS) and not path.name.startswith("."):
            files[rel] = sha256_file(path)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
        "repos": {name: dict(info) for name, info in repos.items()},
        "requirements": list(requirements),
        "download_args": list(download_args),
    }
    write_text_atomic(bundle_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    write_text_atomic(bundle_dir / SUMS, "".join(f"{digest}  {rel}\n" for rel, digest in files.items()))
    return BundleSummary(bundle_dir, len(files), sum(1 for f in files if f.startswith("wheels/")), manifest["repos"])


def verify(bundle_dir: Path, pins: Mapping[str, str]) -> BundleSummary:
    """Check the bundle against its manifest and the configured pins (``name -> ref``)."""
    hint = "run `invoke env.download` on a machine with network and copy the bundle here"
    if not bundle_dir.is_dir():
        raise BundleError(f"no offline bundle at {bundle_dir}; {hint}")
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"offline bundle {bundle_dir} has no {MANIFEST} (incomplete download?); {hint}") from None
    except ValueError as exc:
        raise BundleError(f"{bundle_dir / MANIFEST} is not valid JSON ({exc}); {hint}") from None
    files: Mapping[str, str] = manifest.get("files", {})
    problems = []
    for rel, digest in files.items():
        path = bundle_dir / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel} does not match its checksum")
    repos = manifest.get("repos", {})
    for name, ref in pins.items():
        if name not in repos or f"repos/{name}.bundle" not in files:
            problems.append(f"repository {name} is not in it")
        elif repos[name].get("ref") != ref:
            problems.append(f"repository {name} was bundled at {repos[name].get('ref')!r}, the configuration pins {ref!r}")
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise BundleError(f"offline bundle {bundle_dir}: {problems[0]}{more}; {hint}")
    wheels = sum(1 for rel in files if rel.startswith("wheels/"))
    return BundleSummary(bundle_dir, len(files), wheels, repos)
