"""Root of the task tree that ``invoke`` loads (``invoke --list``).

Invoke imports this file as the module ``tasks``, which hides the ``tasks/``
package beside it. Pointing ``__path__`` at that folder turns this module into
the package, so ``from tasks import data`` finds ``tasks/data.py`` here, under
Fabric's ``fabfile.py`` and under pytest (which imports ``tasks/__init__.py``,
kept empty) alike. Collection modules import only Invoke and the standard
library at the top, so listing tasks stays instant.
"""

from pathlib import Path

from invoke import Collection, Exit

from titanenv.errors import ConfigError
from titanenv.yamlfile import check_tool_files  # the standard library and PyYAML only

__path__ = [str(Path(__file__).with_name("tasks"))]

# Invoke (Fabric) reads invoke.yaml (fabric.yaml) beside this file next, expanding YAML aliases as it goes.
try:
    check_tool_files(Path(__file__).parent)
except ConfigError as exc:
    raise Exit(f"error: {exc}", code=1) from None

from tasks import _common, config, container, data, env, jobs, pipeline, remote, research, train  # noqa: E402

# Invoke reads its configuration and environment next; the project's INVOKE_* variables are not for it.
_common.set_aside_project_variables()

ns = Collection(config, container, data, env, jobs, remote, research, train)
ns.add_task(pipeline.pipeline)
