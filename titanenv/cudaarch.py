"""``TORCH_CUDA_ARCH_LIST``: the one table of which nvcc builds for which GPU (standard library only).

:mod:`titanenv.envsetup.inside` reads it inside the container with the
container's bare Python, the job environment on the host; so this module
imports nothing beyond the standard library.
"""

from __future__ import annotations

from typing import Iterable

# Compute capability, first CUDA release whose nvcc builds it, first that no longer does.
# V100 (7.0) needs CUDA 9 to 12.x: CUDA 13 dropped Volta. A100 >= 11, H100 >= 11.8.
NVCC_SPANS: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = (
    ("7.0", (9, 0), (13, 0)),
    ("8.0", (11, 0), (99, 0)),
    ("9.0", (11, 8), (99, 0)),
)


def cuda_arch_list(nvcc_release: str | None, machine: Iterable[str], skip: Iterable[str] = ()) -> str:
    """What the installed nvcc (``12.9``) supports, else the machine's compute capabilities, less ``skip``."""
    if nvcc_release:
        major, minor = (int(x or 0) for x in (nvcc_release.split(".") + ["0"])[:2])
        archs = [cc for cc, first, past in NVCC_SPANS if first <= (major, minor) < past]
    else:
        archs = list(machine)
    skipped = set(skip)
    return ";".join(a for a in archs if a not in skipped)
