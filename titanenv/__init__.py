"""Library behind the project's Invoke tasks: config, rendering, Slurm, data, training.

Nothing in this package imports Invoke; tasks in ``tasks/`` resolve options and
call these functions. Heavy dependencies (torch, tokenizers, datasets) are
imported inside the functions that need them.
"""

__version__ = "0.1.0"
