"""Layered configuration: project defaults, machine profiles, user file, env, flags."""

from titanenv.config.loader import Config, MachineProfile, known_machines, load_config, machine_profiles
from titanenv.config.paths import Paths, cache_environment, container_stem, HF_OFFLINE_ENVIRONMENT
from titanenv.config.schema import PARTITION_KINDS, Settings
from titanenv.config.sources import Source

__all__ = [
    "Config",
    "HF_OFFLINE_ENVIRONMENT",
    "PARTITION_KINDS",
    "Paths",
    "Settings",
    "Source",
    "cache_environment",
    "container_stem",
    "MachineProfile",
    "known_machines",
    "machine_profiles",
    "load_config",
]
