"""What a rendered batch script asks for, read back from its ``#SBATCH`` lines."""

from __future__ import annotations

import re

_DIRECTIVE = re.compile(r"^#SBATCH(?=\s)")
_SPACE = " \t\n\v\f\r"  # C's isspace(): sbatch reads bytes


def sbatch_arguments(text: str) -> list[str]:
    """The words sbatch reads from the rest of an ``#SBATCH`` line (``_get_argument`` in its opt.c).

    Like a shell, sbatch groups words with ``'`` or ``"`` and ends the line
    at an unquoted ``#``; unlike one, ``\\`` escapes the next character even
    inside quotes. An unmatched quote is sbatch's fatal error, here ValueError.
    """
    words: list[str] = []
    index, end = 0, len(text)
    while True:
        while index < end and text[index] in _SPACE and text[index] != "\n":
            index += 1
        if index >= end or text[index] in "\n#":
            return words
        word: list[str] = []
        quote = ""
        while index < end and (quote or text[index] not in _SPACE) and text[index] != "\n":
            char = text[index]
            if char == "\\":
                index += 1
                if index < end and text[index] != "\n":
                    word.append(text[index])
                    index += 1
                continue
            if quote:
                if char == quote:
                    quote = ""
                else:
                    word.append(char)
            elif char in "'\"":
                quote = char
            elif char == "#":
                break
            else:
                word.append(char)
            index += 1
        if quote:
            raise ValueError(f"unmatched {quote} in {text.strip()!r}")
        words.append("".join(word))
        if index < end and text[index] == "#":
            return words


def directives(script: str) -> dict[str, str]:
    """``--name=value`` of every ``#SBATCH`` line before the first command, as sbatch reads them.

    sbatch stops reading directives at the first line that is neither a
    comment nor blank, and so does this.
    """
    found: dict[str, str] = {}
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if not _DIRECTIVE.match(stripped):
            continue
        try:
            words = sbatch_arguments(stripped[len("#SBATCH"):])
        except ValueError:
            continue  # sbatch itself would refuse the script
        if not words or not re.match(r"^--[a-z][a-z0-9-]*", words[0]):
            continue
        name, equals, value = words[0][2:].partition("=")
        if not equals and len(words) > 1:
            value = words[1]
        found[name] = value
    return found


def expand_pattern(pattern: str, *, job_id: str, job_name: str, user: str = "") -> str:
    """A ``--output``/``--error`` file name with Slurm's ``%j``, ``%x``, ``%u``, ``%A``, ``%%`` filled in."""
    values = {"j": job_id, "A": job_id, "x": job_name, "u": user, "%": "%"}
    return re.sub(r"%(\d*)([jAxu%])", lambda m: values[m.group(2)].zfill(int(m.group(1) or 0)), pattern)
