"""What a rendered batch script asks for, read back from its ``#SBATCH`` lines."""

from __future__ import annotations

import re
import shlex

_DIRECTIVE = re.compile(r"^#SBATCH\s+--([a-z][a-z0-9-]*)(?:[=\s]\s*(.*))?$")


def directives(script: str) -> dict[str, str]:
    """``--name=value`` of every ``#SBATCH`` line before the first command, unquoted.

    sbatch stops reading directives at the first line that is neither a
    comment nor blank, and so does this.
    """
    found: dict[str, str] = {}
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        match = _DIRECTIVE.match(stripped)
        if match:
            name, value = match.group(1), match.group(2) or ""
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            found[name] = " ".join(words)
    return found


def expand_pattern(pattern: str, *, job_id: str, job_name: str, user: str = "") -> str:
    """A ``--output``/``--error`` file name with Slurm's ``%j``, ``%x``, ``%u``, ``%A``, ``%%`` filled in."""
    values = {"j": job_id, "A": job_id, "x": job_name, "u": user, "%": "%"}
    return re.sub(r"%(\d*)([jAxu%])", lambda m: values[m.group(2)].zfill(int(m.group(1) or 0)), pattern)
