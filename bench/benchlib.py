"""What several benchmarks share: running this project's `invoke` as a whole process.

Benchmarks run as scripts (``.venv/bin/python bench/NAME.py``), so this
directory is first on ``sys.path`` and ``from benchlib import invoke`` finds it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str, env: dict[str, str]) -> str:
    """``invoke ARGS`` in the repository; its output, or exit naming the task and the end of its output."""
    done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"invoke {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout + done.stderr
