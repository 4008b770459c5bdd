"""Errors raised by the library; tasks turn them into one-line exits."""

from __future__ import annotations


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
