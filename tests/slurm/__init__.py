"""The Slurm layer on the test suite's real local Slurm cluster."""
