"""The research loop after training: export a checkpoint to Hugging Face, sample from it, report a run.

- :mod:`titanenv.research.export`: a TorchTitan checkpoint (DCP, full
  training state) to a Hugging Face Llama directory, through TorchTitan's own
  state-dict adapter;
- :mod:`titanenv.research.sample`: text generated from a checkpoint or an
  exported directory;
- :mod:`titanenv.research.report`: a run's metrics as a table and a PNG.

Heavy imports (torch, torchtitan, transformers, matplotlib) happen inside the
functions that need them; ``python -m titanenv.research export ...`` is what
an export job runs.
"""
