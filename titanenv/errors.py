"""Errors raised by the library; tasks turn them into one-line exits."""

from __future__ import annotations

import errno
import os


class TitanEnvError(Exception):
    """Root of every error the library raises on purpose.

    ``str(error)`` is a single line that says what is wrong and, where it
    helps, what to do about it.
    """


class ConfigError(TitanEnvError):
    """A configuration file, key or value is wrong.

    ``source`` names where the value came from (``machines/jwb.yaml:12``,
    ``env INVOKE_MACHINE``, ``flag --nodes``); ``key`` is its dotted path.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.message = message
        parts = [p for p in (source, key) if p]
        super().__init__(": ".join([*parts, message]))


class RenderError(TitanEnvError):
    """An sbatch template could not be rendered."""


class CommandError(TitanEnvError):
    """An external command failed; carries its argv, exit status and stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, hint: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        last = " ".join(stderr.strip().splitlines()[-1:]) or f"exit status {returncode}"
        message = f"{argv[0]} failed: {last}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


# What a failed write means, and what the user can do about it, by errno; ``instead`` replaces
# the advice of the last three (there is nothing to do there but write elsewhere).
_FILE_SYSTEM_PROBLEMS = {
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota there"),
    errno.EROFS: ("read-only file system", ""),
    errno.EACCES: ("permission denied", ""),
    errno.EPERM: ("operation not permitted", ""),
}


class FileSystemError(TitanEnvError):
    """A file could not be written or read: a full disk, a quota, permissions, a read-only mount.

    Made from the ``OSError`` with :meth:`of`, so the line names the path
    and what to do instead of ending in a traceback.
    """

    @classmethod
    def of(cls, exc: OSError, *, path: "os.PathLike[str] | str | None" = None, instead: str = "",
           then: str = "") -> "FileSystemError":
        """``PATH: PROBLEM; FIX or INSTEAD (THEN)``: ``instead`` names another way (``choose another --output``).

        ``path`` names the place when the failing call's own file name would not help the user.
        """
        where = path if path is not None else exc.filename
        problem, fix = _FILE_SYSTEM_PROBLEMS.get(exc.errno or 0, (exc.strerror or str(exc), ""))
        advice = " or ".join(part for part in (fix, instead) if part) or "write somewhere else"
        message = f"{os.fspath(where)}: {problem}" if where is not None else problem
        if advice:
            message += f"; {advice}"
        if then:
            message += f" ({then})"
        error = cls(message)
        error.errno = exc.errno
        return error
