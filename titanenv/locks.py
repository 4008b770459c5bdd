"""One writer per output: lock files that hold on GPFS, Lustre and NFS as on a laptop.

A lock on ``TARGET`` (a dataset prefix, an experiment's checkpoint folder)
is the file ``TARGET.lock``. It holds, as JSON, who writes TARGET: host,
process id and that process's start time, since when, what (the task),
and, once the lock is handed to a Slurm job, the job's id. Every process
that shares one lock (the tasks of one Slurm job on many nodes) shares its
``token``: a process that brings the lock's token joins it instead of
being refused.

How it is taken: the holder's JSON is written to a file of its own beside
the lock, which is then hard-linked to ``TARGET.lock``. ``link()`` either
makes the name or fails because it exists, in one metadata operation the
file system serialises (GPFS's token manager, Lustre's metadata server, the
NFS server), so of two processes on two nodes exactly one wins, and a
reader never sees a half-written lock. (This is the way ``open(2)``
recommends for network file systems; when an NFS client retries a link
whose reply was lost, the link count of the holder's own file tells that
it did succeed.)

Why not ``fcntl``/``flock``: a kernel lock lives only while its process
keeps the file open, so it cannot be handed from the login node's
submitting process to a job waiting in the queue, nor be shared by the
tasks of one job (they would lock each other out); on Lustre such locks
work across nodes only on mounts with ``-o flock`` (``localflock`` makes
them node-local, the default fails), ``flock`` on NFS is emulated with
``lockd``, and ``filelock``'s ``FileLock`` (``flock``) is known not to
exclude processes on different GPFS nodes (tox-dev/filelock#389); its
``SoftFileLock`` is an ``O_EXCL`` file without a holder to name or check.

The cost of a lock file is that a holder that dies leaves it behind. It is
taken over, with a note saying so, when its holder is known to be gone: a
process on this host (same host, boot and PID namespace) that no longer
exists or whose id now belongs to a younger process, or a Slurm job that
Slurm reports ended (or no longer knows). A holder on another host, or a
job whose state cannot be read, is never guessed dead: the refusal names
it and the lock file to remove once it is known to be gone.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from titanenv.errors import FileSystemError, TitanEnvError

SUFFIX = ".lock"
# Attempts to take a lock whose stale holder other processes are taking over at the same moment.
_ATTEMPTS = 5


class LockBusy(TitanEnvError):
    """Someone else writes the target: the message names them and what to do."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock (the lock file's content)."""

    host: str
    pid: int
    since: str  # UTC, ISO 8601
    what: str  # the task: data.preprocess, train.run
    token: str
    started: int | None = None  # the process's start time, clock ticks after boot (/proc/PID/stat)
    boot: str = ""  # /proc/sys/kernel/random/boot_id
    pid_namespace: str = ""  # /proc/self/ns/pid
    job: str = ""  # the Slurm job the lock was handed to

    def describe(self) -> str:
        where = f"host {self.host} pid {self.pid} (since {self.since})"
        return f"Slurm job {self.job}, submitted by {where}" if self.job else where


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + SUFFIX)


def current_holder(what: str, *, token: str = "", job: str = "") -> Holder:
    """This process as a lock holder; a fresh token unless one is given (to join a job's lock)."""
    pid = os.getpid()
    return Holder(
        host=socket.gethostname(),
        pid=pid,
        since=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        what=what,
        token=token or secrets.token_hex(8),
        started=_start_time(pid),
        boot=_read("/proc/sys/kernel/random/boot_id"),
        pid_namespace=_pid_namespace(),
        job=job,
    )


class Lock:
    """A lock this process holds (or shares with the other tasks of its Slurm job)."""

    def __init__(self, target: Path, holder: Holder):
        self.target = target
        self.path = lock_path(target)
        self.holder = holder
        self.handed = False  # to a Slurm job: outlives this process

    def still_ours(self) -> bool:
        found = read_holder(self.path)
        return isinstance(found, Holder) and found.token == self.holder.token

    def release(self) -> None:
        """Remove the lock file if it is still ours (a holder judged gone may have been taken over)."""
        if not self.handed and self.still_ours():
            self.path.unlink(missing_ok=True)

    def hand_to_job(self, job_id: str) -> None:
        """Record that Slurm job ``job_id`` now holds the lock: it outlives this process."""
        if not self.still_ours():
            raise LockBusy(f"{self.path}: the lock of {self.target} is no longer this process's; "
                           f"job {job_id} will refuse to write it")
        self.holder = replace(self.holder, job=job_id)
        try:
            own = _own_file(self.path, self.holder)
            try:
                os.replace(own, self.path)
            except BaseException:
                own.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise FileSystemError.of(exc, path=self.path) from None
        self.handed = True

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path) -> Holder | str | None:
    """The holder in a lock file; None when there is none; a string saying why it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"


def acquire(target: Path, *, what: str, token: str = "", job: str = "", instead: str = "",
            echo: Callable[[str], None] = print) -> Lock:
    """Take the lock on ``target``, or join it when it holds ``token``; refuse in one line while another holds it.

    ``instead`` ends the refusal with another way out (``or use another --name``).
    A lock whose holder is gone (see the module docstring) is taken over, saying so.
    """
    target = Path(target)
    path = lock_path(target)
    mine = current_holder(what, token=token, job=job)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _acquire(target, path, mine, token, instead, echo)
    except OSError as exc:
        # Name the directory rather than this process's own hidden file in it.
        own = str(exc.filename or "").startswith(str(path.parent / f".{path.name}."))
        raise FileSystemError.of(exc, path=path.parent if own or not exc.filename else None,
                                 instead=instead) from None


def _acquire(target: Path, path: Path, mine: Holder, token: str, instead: str,
             echo: Callable[[str], None]) -> Lock:
    for _ in range(_ATTEMPTS):
        if _link(path, mine):
            return Lock(target, mine)
        found = read_holder(path)
        if found is None:  # released a moment ago
            continue
        if isinstance(found, str):
            raise LockBusy(f"{path}: a lock file on {target} that cannot be read ({found}); "
                           f"if no one is writing {target}, remove {path}")
        if token and found.token == token:
            return Lock(target, found)
        gone = why_gone(found)
        if gone is None:
            raise LockBusy(refusal(target, found, instead))
        if _take_away(path, found):
            echo(f"note: took over the lock of {target} from {found.describe()}: {gone}")
    raise LockBusy(f"{target}: its lock {path} changed hands {_ATTEMPTS} times while this process tried to take it; "
                   "another process is starting on it: wait for it")


def check(target: Path, *, instead: str = "") -> None:
    """Refuse in one line if someone holds the lock on ``target`` now; take nothing."""
    path = lock_path(Path(target))
    found = read_holder(path)
    if isinstance(found, Holder) and why_gone(found) is None:
        raise LockBusy(refusal(Path(target), found, instead))


def refusal(target: Path, holder: Holder, instead: str = "") -> str:
    path = lock_path(target)
    if holder.job:
        state = _job_state(holder.job)
        what = f"Slurm job {holder.job}" + (f" ({state})" if state else "")
        return (f"{target} is being written by {what}, submitted by host {holder.host} pid {holder.pid} "
                f"(since {holder.since}); wait for it (invoke jobs.wait --job {holder.job}), cancel it "
                f"(invoke jobs.cancel --job {holder.job})" + (f" or {instead}" if instead else "")
                + (f"; if Slurm no longer knows it, remove {path}" if not state else ""))
    if _same_machine(holder):
        way = f"stop it (kill {holder.pid})"
    else:
        way = f"if that process is gone, remove {path}"
    return (f"{target} is being written by host {holder.host} pid {holder.pid} (since {holder.since}, "
            f"{holder.what}); wait for it" + (f", {instead}" if instead else "") + f" or {way}")


def why_gone(holder: Holder) -> str | None:
    """Why the holder is known to be gone, or None while it may still be writing."""
    if holder.job:
        state = _job_state(holder.job)
        if state is None or state == "":
            return None
        from titanenv.slurm.jobs import ENDED

        if state in ENDED:
            return f"the job ended ({state})"
        if state == "UNKNOWN_TO_SLURM":
            return "Slurm no longer knows the job"
        return None
    if not _same_machine(holder):
        return None
    now = _start_time(holder.pid)
    if now is None and not _exists(holder.pid):
        return f"process {holder.pid} no longer exists"
    if holder.started is not None and now is not None and now != holder.started:
        return f"process {holder.pid} no longer exists (its id belongs to a younger process)"
    return None


def _job_state(job_id: str) -> str | None:
    """Slurm's state of the job; ``UNKNOWN_TO_SLURM`` if Slurm does not know it; None if Slurm cannot be asked."""
    try:
        from titanenv.slurm.jobs import lookup

        (job,) = lookup([job_id]).jobs
    except (TitanEnvError, OSError, ValueError):
        return None
    return "UNKNOWN_TO_SLURM" if job.source == "none" else job.state


def _link(path: Path, holder: Holder) -> bool:
    """Make ``path`` a link to a file holding ``holder``; False if ``path`` exists."""
    own = _own_file(path, holder)
    try:
        try:
            os.link(own, path)
            return True
        except FileExistsError:
            # NFS: a retried link whose first try succeeded answers EEXIST.
            return os.stat(own).st_nlink == 2
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):  # no hard links here
                return _create_exclusive(path, holder)
            raise
    finally:
        own.unlink(missing_ok=True)


def _own_file(path: Path, holder: Holder) -> Path:
    own = path.with_name(f".{path.name}.{holder.host}.{os.getpid()}.{holder.token}")
    try:
        with open(own, "x", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(holder)) + "\n")
    except BaseException:
        own.unlink(missing_ok=True)
        raise
    return own


def _create_exclusive(path: Path, holder: Holder) -> bool:
    """O_CREAT|O_EXCL where a file system has no hard links (a reader may see it empty for a moment)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(holder)) + "\n")
    return True


def _take_away(path: Path, stale: Holder) -> bool:
    """Remove the lock file of a holder judged gone, unless another process replaced it meanwhile."""
    aside = path.with_name(f".{path.name}.stale.{socket.gethostname()}.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = read_holder(aside)
    if isinstance(moved, Holder) and moved.token != stale.token:
        # Another process took it over between our read and the rename: give it back.
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def _same_machine(holder: Holder) -> bool:
    """Whether the holder's process id means the same thing here (host, boot and PID namespace)."""
    return (holder.host == socket.gethostname()
            and (not holder.boot or holder.boot == _read("/proc/sys/kernel/random/boot_id"))
            and (not holder.pid_namespace or holder.pid_namespace == _pid_namespace()))


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot."""
    text = _read(f"/proc/{pid}/stat")
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""
