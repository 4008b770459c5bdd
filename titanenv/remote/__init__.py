"""Running this project's tasks on a login node over SSH (``fab -H HOST TASK``).

- :mod:`~titanenv.remote.target`: which machine a host is, where its checkout lives.
- :mod:`~titanenv.remote.sshconfig`: the user's OpenSSH config, ``Include`` honoured.
- :mod:`~titanenv.remote.connection`: a Fabric connection that checks host keys.
- :mod:`~titanenv.remote.scripts`: the shell scripts sent to the host (pure).
- :mod:`~titanenv.remote.session`: one host: connection, target, commands.
- :mod:`~titanenv.remote.bootstrap`: create/update the checkout and its venv.
- :mod:`~titanenv.remote.executor`: what ``fab`` runs (named in fabric.yaml).

Submodules import Fabric; this package itself imports nothing.
"""
