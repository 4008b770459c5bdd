"""Names shared by every layer: environment variable names (standard library only)."""

from __future__ import annotations

import re

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_env_name(name: object, *, prefix_glob: bool = False) -> bool:
    """Whether ``name`` can name an environment variable (with ``prefix_glob``: or ``NAME*``)."""
    if not isinstance(name, str):
        return False
    if prefix_glob and name.endswith("*"):
        name = name[:-1]
    return _ENV_NAME.fullmatch(name) is not None
