"""The software stack in the container: venv, pinned repositories, offline bundle.

- :mod:`.repos`: clone, fork switch and update of pinned repositories (git, on the host);
- :mod:`.inside`: venv and pip installs, run *inside* the container with its
  Python; it imports only the standard library (the container has none of
  this project's dependencies), so this package's ``__init__`` imports nothing;
- :mod:`.bundle`: the offline bundle (wheels + repository bundles + manifest);
- :mod:`.setup`: ``env.setup``, ``env.download``, ``env.verify-bundle`` from the configuration.
"""
