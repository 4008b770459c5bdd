"""What TorchTitan 0.3.0 needs to train on a machine without a GPU (applied only there).

- TorchTitan picks its device when imported and falls back to ``cuda``:
  make torch report ``cpu`` as the available device type first.
- After the first step it shortens the process groups' timeouts with a
  barrier on a CUDA device index and ``torch.distributed.set_timeout``
  (which torch 2.13 lacks): skipped, gloo keeps the timeout it was made with.
- FSDP reduces gradients with ``PREMUL_SUM``, which gloo rejects: reduce
  with a plain sum (TorchTitan divides by the token count in the loss itself).
- Its memory monitor asks the device module for a name, capacity and peak
  statistics that ``torch.cpu`` does not have: answer with the machine's
  memory and this process's peak resident set.
"""

from __future__ import annotations


def needed() -> bool:
    import torch

    return not torch.cuda.is_available()


def apply() -> None:
    import torch
    import torch._utils
    import torch.distributed

    # Before TorchTitan is imported: it reads the device type once.
    torch._utils._get_available_device_type = lambda: "cpu"
    if not hasattr(torch.distributed, "set_timeout"):
        torch.distributed.set_timeout = lambda timeout, group=None: None
    _cpu_memory_functions(torch.cpu)
    import torchtitan.distributed.utils as dist_utils

    dist_utils.set_pg_timeouts = lambda *args, **kwargs: None
    plain_fsdp_sums()


def plain_fsdp_sums() -> None:
    """FSDP reduces gradients with a plain sum: gloo rejects its PREMUL_SUM."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    group = _fsdp_param_group.FSDPParamGroup
    if getattr(group, "_titanenv_sum", False):
        return
    original = group.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.force_sum_reduction_for_comms = True

    group.__init__ = init
    group._titanenv_sum = True


def _cpu_memory_functions(module) -> None:
    import os
    import platform
    import resource
    from types import SimpleNamespace

    def peak_rss() -> int:
        # ru_maxrss is KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    defaults = {
        "get_device_name": lambda device=None: platform.processor() or platform.machine() or "cpu",
        "get_device_properties": lambda device=None: SimpleNamespace(total_memory=total),
        "reset_peak_memory_stats": lambda device=None: None,
        "empty_cache": lambda: None,
        "memory_stats": lambda device=None: {
            "active_bytes.all.peak": peak_rss(), "reserved_bytes.all.peak": peak_rss(),
            "num_alloc_retries": 0, "num_ooms": 0,
        },
    }
    for name, function in defaults.items():
        if not hasattr(module, name):
            setattr(module, name, function)
