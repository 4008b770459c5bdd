"""Trainings here validate on the sample corpus's held-out part unless a test names another one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import valid_env


@pytest.fixture(autouse=True)
def held_out_validation(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """debug_cpu.toml validates on {data_valid_output}: point data.valid_output at a real held-out dataset."""
    for name, value in valid_env().items():
        monkeypatch.setenv(name, value)
