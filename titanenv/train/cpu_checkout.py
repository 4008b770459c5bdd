"""CPU adapter for a TorchTitan checkout's own entry point, loaded by TorchTitan itself.

``train.torchtitan.cpu_options`` names this module to TorchTitan 0.2's
``--experimental.custom_import``, which imports it in ``Trainer.__init__``:
after TorchTitan's modules are imported, before the trainer picks its device.
Importing it is the whole interface. Where torch sees no GPU:

- each ``torchtitan.*`` module chose ``cuda`` when imported (it falls back to
  it when no accelerator answers): its ``device_type`` / ``device_module``
  become ``cpu`` / ``torch.cpu``, so the trainer's device, the mesh, the
  process group backend (gloo) and the memory monitor are the CPU's;
- after the first step it shortens the process groups' timeouts with a
  barrier on a device index: skipped, gloo keeps the timeout it was made with;
- FSDP gradient sums and the memory monitor's questions as for our own
  TorchTitan 0.3.0 (:mod:`titanenv.train.cpu`).

With a GPU, importing it changes nothing.
"""

from __future__ import annotations

import sys


def apply() -> list[str]:
    """Move the already imported TorchTitan onto the CPU; the modules changed."""
    import torch
    import torch.distributed

    from titanenv.train.cpu import _cpu_memory_functions, plain_fsdp_sums

    _cpu_memory_functions(torch.cpu)
    if not hasattr(torch.distributed, "set_timeout"):
        torch.distributed.set_timeout = lambda timeout, group=None: None
    changed = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "torchtitan" or name.startswith("torchtitan.")):
            continue
        attributes = vars(module)
        if attributes.get("device_type") == "cuda":
            module.device_type = "cpu"
            changed.append(name)
        if attributes.get("device_module") is torch.cuda:
            module.device_module = torch.cpu
        if callable(attributes.get("set_pg_timeouts")):
            module.set_pg_timeouts = lambda *args, **kwargs: None
    plain_fsdp_sums()
    return changed


def _main() -> None:
    import torch

    if torch.cuda.is_available():
        return
    changed = apply()
    print(f"titanenv: TorchTitan runs on the CPU ({len(changed)} of its modules had chosen cuda)", file=sys.stderr)


_main()
