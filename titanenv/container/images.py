"""Built, active and previous containers: build, download, activate, roll back.

A build never touches the container in use: it goes to the build path (an
image file under ``paths.container_build_dir``, or the ``:build`` name for
Docker/Podman) through a temporary name, and only :meth:`activate` makes it
the active one, keeping the replaced one as *previous* so that
:meth:`rollback` can restore it. Every step is a rename or a re-tag, never a
prompt, so the tasks work in CI and over SSH.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from titanenv.container.host import DiskFull, HostShell
from titanenv.container.runtime import Apptainer, Docker
from titanenv.errors import CommandError, TitanEnvError
from titanenv import files

SLOTS = ("build", "active", "previous")


class ImageError(TitanEnvError):
    """A container is missing, unverifiable or cannot be moved."""


@dataclass(frozen=True)
class ImageLayout:
    """Where the containers of one image, name and CPU architecture live."""

    stem: str
    container_dir: Path
    build_dir: Path
    archive_dir: Path

    def file(self, slot: str) -> Path:
        """The image file of ``slot`` (Apptainer/Singularity)."""
        if slot == "build":
            return self.build_dir / f"{self.stem}.sif"
        if slot == "active":
            return self.container_dir / f"{self.stem}.sif"
        return self.container_dir / f"{self.stem}.previous.sif"

    def ref(self, slot: str) -> str:
        """The image name of ``slot`` (Docker/Podman; names are lower case)."""
        return f"{self.stem.lower()}:{slot}"

    def meta(self, slot: str, named: bool) -> Path:
        """JSON record of where the image of ``slot`` came from."""
        if named:
            return self.container_dir / f"{self.stem}.{slot}.json"
        return self.file(slot).with_name(self.file(slot).name + ".json")

    @property
    def archive_tar(self) -> Path:
        """``docker save`` archive for offline builds."""
        return self.archive_dir / f"{self.stem}.tar"

    @property
    def archive_sif(self) -> Path:
        """Apptainer image pulled on a machine with network, for offline builds."""
        return self.archive_dir / f"{self.stem}.sif"


@dataclass(frozen=True)
class SlotState:
    slot: str
    location: str
    present: bool
    digest: str = ""
    record: Mapping[str, Any] | None = None

    def line(self) -> str:
        if not self.present:
            return f"{self.slot:<8} -        {self.location}"
        source = (self.record or {}).get("source", "")
        when = (self.record or {}).get("built_at", "")
        extra = f"  from {source}" if source else ""
        extra += f"  built {when}" if when else ""
        return f"{self.slot:<8} present  {self.location}  {self.digest}{extra}"


def sha256_file(path: Path) -> str:
    """The image digest of a file: ``sha256:<hex>``, as Docker and Podman write image IDs."""
    return "sha256:" + files.sha256_file(path)


def normalise_digest(value: str) -> str:
    value = value.strip()
    return value if value.startswith("sha256:") else f"sha256:{value}"


def write_checksum(path: Path) -> str:
    """Write ``<path>.sha256`` (``sha256sum`` format) beside ``path``; return the digest."""
    digest = sha256_file(path)
    _atomic_write(path.with_name(path.name + ".sha256"), f"{digest.removeprefix('sha256:')}  {path.name}\n")
    return digest


def verify_checksum(path: Path) -> str | None:
    """Check ``path`` against its ``.sha256`` file, if it has one; return the digest checked."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return None
    expected = normalise_digest(sidecar.read_text().split()[0])
    actual = sha256_file(path)
    if actual != expected:
        raise ImageError(f"{path} does not match its checksum {sidecar.name} ({actual} != {expected}); download it again")
    return actual


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(path, text)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _disk_full(where: Path, active: str) -> DiskFull:
    return DiskFull(
        f"no space left on device under {where} while building; the active container {active} is untouched; "
        f"free space there or point paths.container_build_dir elsewhere"
    )


class _Store:
    """What file and named stores share: records, digest checks, messages."""

    named = False

    def __init__(self, runtime: Any, shell: HostShell, layout: ImageLayout, env: Mapping[str, str],
                 *, image: str, expected_digest: str = "", echo: Callable[[str], None] = print) -> None:
        self.runtime = runtime
        self.shell = shell
        self.layout = layout
        self.env = dict(env)
        self.image = image
        self.expected_digest = normalise_digest(expected_digest) if expected_digest else ""
        self.echo = echo

    # -- records ---------------------------------------------------------------
    def record(self, slot: str) -> dict[str, Any] | None:
        path = self.layout.meta(slot, self.named)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _write_record(self, slot: str, data: Mapping[str, Any]) -> None:
        _atomic_write(self.layout.meta(slot, self.named), json.dumps(dict(data), indent=2) + "\n")

    def _move_record(self, source: str, target: str) -> None:
        src = self.layout.meta(source, self.named)
        dst = self.layout.meta(target, self.named)
        if src.exists():
            os.replace(src, dst)
        elif dst.exists():
            dst.unlink()

    def _swap_records(self) -> None:
        """The active and previous slots' records trade places (a rollback)."""
        a, p = self.layout.meta("active", self.named), self.layout.meta("previous", self.named)
        held = a.with_name(a.name + ".swap")
        if a.exists():
            os.replace(a, held)
        if p.exists():
            os.replace(p, a)
        if held.exists():
            os.replace(held, p)

    def _check_digest(self, digest: str, what: str) -> None:
        if self.expected_digest and digest != self.expected_digest:
            raise ImageError(
                f"{what} has digest {digest}, but container.image_digest is {self.expected_digest}; "
                "the image changed upstream or the download is corrupt (fix container.image_digest if the change is intended)"
            )

    def status(self) -> list[SlotState]:
        return [self.slot_state(slot) for slot in SLOTS]

    def offline_archive(self) -> Path:
        for candidate in self.archive_candidates():
            if candidate.is_file():
                return candidate
        expected = " or ".join(str(c) for c in self.archive_candidates())
        raise ImageError(
            f"no offline container archive: expected {expected}; run `invoke container.download` on a machine "
            "with network and copy the file here"
        )

    def download(self, *, force: bool = False) -> Path:
        """The image as one archive file (with its ``.sha256``), for machines without network."""
        target = self.archive()
        if target.exists() and not force:
            raise ImageError(f"{target} already exists; pass --force to download it again")
        self.shell.check(self.env)
        target.parent.mkdir(parents=True, exist_ok=True)
        with files.replacing(target) as partial:
            self._save_archive(partial)
        write_checksum(target)
        return target

    def archive(self) -> Path:
        """Where :meth:`download` puts the archive."""
        raise NotImplementedError

    def _save_archive(self, partial: Path) -> None:
        raise NotImplementedError

    def archive_candidates(self) -> list[Path]:
        raise NotImplementedError

    def slot_state(self, slot: str) -> SlotState:
        raise NotImplementedError


class FileImages(_Store):
    """Apptainer/Singularity: image files, moved by rename."""

    runtime: Apptainer

    def archive_candidates(self) -> list[Path]:
        return [self.layout.archive_sif, self.layout.archive_tar]

    def slot_state(self, slot: str) -> SlotState:
        path = self.layout.file(slot)
        present = path.is_file()
        record = self.record(slot) if present else None
        return SlotState(slot, str(path), present, (record or {}).get("digest", ""), record)

    def build(self, *, offline: bool = False, force: bool = False) -> Path:
        target = self.layout.file("build")
        if target.exists() and not force:
            raise ImageError(
                f"a built container is already waiting at {target}; activate it with `invoke container.activate` "
                "or rebuild with --force"
            )
        self.shell.check(self.env)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        active = str(self.layout.file("active"))
        try:
            if offline:
                archive = self.offline_archive()
                verify_checksum(archive)
                source = str(archive)
                if archive.suffix == ".sif":
                    self.echo(f"copying {archive} -> {target}")
                    shutil.copyfile(archive, partial)
                else:
                    self.echo(f"building {target} from {archive}")
                    self.shell.run(self.runtime.build_from_archive_argv(str(archive), str(partial)), env=self.env)
            else:
                source = self.image
                self.echo(f"pulling {self.image} -> {target}")
                self.shell.run(self.runtime.pull_argv(self.image, str(partial)), env=self.env)
            digest = sha256_file(partial)
            self._check_digest(digest, f"the built container {target}")
            os.replace(partial, target)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _disk_full(target.parent, active) from None
            raise
        except DiskFull:
            raise _disk_full(target.parent, active) from None
        finally:
            if partial.exists():
                partial.unlink()
        self._write_record("build", {"source": source, "digest": digest, "built_at": _now(), "runtime": self.runtime.name})
        return target

    def activate(self) -> Path:
        build, active, previous = (self.layout.file(s) for s in SLOTS)
        if not build.is_file():
            raise ImageError(f"nothing to activate: no built container at {build}; run `invoke container.build` first")
        active.parent.mkdir(parents=True, exist_ok=True)
        if active.exists():
            _keep_as(active, previous)
            self._move_record("active", "previous")
        _move_file(build, active)
        self._move_record("build", "active")
        return active

    def rollback(self) -> Path:
        _, active, previous = (self.layout.file(s) for s in SLOTS)
        if not previous.is_file():
            raise ImageError(f"nothing to roll back to: no previous container at {previous}")
        if active.exists():
            held = active.with_name(f".{active.name}.rollback-{os.getpid()}")
            _keep_as(active, held)
            os.replace(previous, active)
            os.replace(held, previous)
            self._swap_records()
        else:
            os.replace(previous, active)
            self._move_record("previous", "active")
        return active

    def archive(self) -> Path:
        return self.layout.archive_sif

    def _save_archive(self, partial: Path) -> None:
        self.shell.run(self.runtime.pull_argv(self.image, str(partial)), env=self.env)


class NamedImages(_Store):
    """Docker/Podman: image names ``<stem>:build|active|previous``, moved by re-tagging."""

    named = True
    runtime: Docker

    def archive_candidates(self) -> list[Path]:
        return [self.layout.archive_tar]

    def image_id(self, ref: str) -> str | None:
        try:
            out = self.shell.run(self.runtime.inspect_id_argv(ref), env=self.env, capture=True)
        except CommandError:
            return None
        return out.strip() or None

    def slot_state(self, slot: str) -> SlotState:
        ref = self.layout.ref(slot)
        image_id = self.image_id(ref)
        record = self.record(slot) if image_id else None
        return SlotState(slot, ref, image_id is not None, image_id or "", record)

    def build(self, *, offline: bool = False, force: bool = False) -> str:
        self.shell.check(self.env)
        target = self.layout.ref("build")
        if self.image_id(target) and not force:
            raise ImageError(
                f"a built container is already waiting as {target}; activate it with `invoke container.activate` "
                "or rebuild with --force"
            )
        # Podman unpacks archives under TMPDIR: keep that on the build path, not a small /tmp.
        tmp = self.layout.build_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "TMPDIR": str(tmp)}
        try:
            if offline:
                archive = self.offline_archive()
                verify_checksum(archive)
                source = str(archive)
                loaded = _archive_image_id(archive)
                self.echo(f"loading {archive} as {target}")
                self.shell.run(self.runtime.load_argv(str(archive)), env=env)
                self.shell.run(self.runtime.tag_argv(loaded, target), env=env)
            else:
                source = self.image
                self.echo(f"pulling {self.image} as {target} (quietly; large images take minutes)")
                pulled = self._pull(env)
                self.shell.run(self.runtime.tag_argv(pulled, target), env=env)
        except DiskFull:
            raise DiskFull(
                f"no space left on device while {self.runtime.name} stored the image (in its storage, see "
                f"`{self.runtime.binary} info`, or under {tmp}); the active container {self.layout.ref('active')} "
                "is untouched; free space there and build again"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        digest = self.image_id(target) or ""
        try:
            self._check_digest(digest, f"the built container {target}")
        except ImageError:
            self.shell.run(self.runtime.untag_argv(target), env=self.env, capture=True)
            raise
        self._write_record("build", {"source": source, "digest": digest, "built_at": _now(), "runtime": self.runtime.name})
        return target

    def _pull(self, env: Mapping[str, str]) -> str:
        """Pull the configured image; return what names it locally (Docker: the name, Podman: the ID)."""
        out = self.shell.run(self.runtime.pull_argv(self.image), env=env, capture=True)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if not lines:
            raise ImageError(f"{self.runtime.binary} pull {self.image} printed no image name")
        return lines[-1]

    def _tag(self, source: str, target: str) -> None:
        self.shell.run(self.runtime.tag_argv(source, target), env=self.env, capture=True)

    def _untag(self, ref: str) -> None:
        self.shell.run(self.runtime.untag_argv(ref), env=self.env, capture=True)

    def activate(self) -> str:
        build, active, previous = (self.layout.ref(s) for s in SLOTS)
        self.shell.check(self.env)
        if self.image_id(build) is None:
            raise ImageError(f"nothing to activate: no built container {build}; run `invoke container.build` first")
        if self.image_id(active) is not None:
            self._tag(active, previous)
            self._move_record("active", "previous")
        self._tag(build, active)
        self._untag(build)
        self._move_record("build", "active")
        return active

    def rollback(self) -> str:
        _, active, previous = (self.layout.ref(s) for s in SLOTS)
        self.shell.check(self.env)
        if self.image_id(previous) is None:
            raise ImageError(f"nothing to roll back to: no previous container {previous}")
        if self.image_id(active) is not None:
            held = self.layout.ref("rollback")
            self._tag(active, held)
            self._tag(previous, active)
            self._tag(held, previous)
            self._untag(held)
            self._swap_records()
        else:
            self._tag(previous, active)
            self._untag(previous)
            self._move_record("previous", "active")
        return active

    def archive(self) -> Path:
        return self.layout.archive_tar

    def _save_archive(self, partial: Path) -> None:
        self.echo(f"pulling {self.image} (quietly; large images take minutes)")
        try:
            pulled = self._pull(self.env)
            self.shell.run(self.runtime.save_argv(pulled, str(partial)), env=self.env)
        except DiskFull:
            raise DiskFull(f"no space left on device under {partial.parent} while saving {self.image}") from None


def _archive_image_id(archive: Path) -> str:
    """The image ID a ``docker save`` archive loads as (the digest of its config)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            manifest = json.loads(member.read()) if member else None
    except (tarfile.TarError, KeyError, ValueError, OSError):
        manifest = None
    if not manifest or not isinstance(manifest, list) or "Config" not in manifest[0]:
        raise ImageError(f"{archive} is not a `docker save` / `podman save` archive (no manifest.json)")
    config = Path(manifest[0]["Config"]).name
    hex_id = config.removeprefix("sha256:").removesuffix(".json")
    return "sha256:" + hex_id


def _keep_as(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` without ever removing ``source``.

    A hard link swapped in by rename keeps ``source`` in place throughout;
    where links are not possible, a copy does the same.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _move_file(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` atomically, copying first across file systems."""
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp.exists():
            tmp.unlink()
        if exc.errno == errno.ENOSPC:
            raise ImageError(f"no space left on device under {target.parent}; {target} is untouched") from None
        raise
    source.unlink()
