"""Training with TorchTitan on the datasets data.preprocess writes.

- ``dataset``: the packed-window sample order over .bin/.idx (no TorchTitan in it);
- ``loader``: TorchTitan's dataloader extension point around it;
- ``registry``: the ``--module titanenv.train.registry --config from_toml`` config function;
- ``jobconfig``: our TOML job description and the torchtitan command line made from it;
- ``cpu``: what TorchTitan 0.3.0 needs to train on a machine without GPUs;
- ``__main__``: the entry point torchrun starts (``python -m titanenv.train``).
"""
