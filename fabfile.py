"""`fab -H HOST TASK [options] ...`: this project's tasks, run on HOST.

fab loads a module named `fabfile`; this one offers the very task tree
`invoke` loads from tasks.py, so `fab --list` and `fab --help TASK` read the
same as `invoke --list` and `invoke --help TASK`. fabric.yaml then hands the
parsed tasks to titanenv.remote.executor.ProjectExecutor, which runs them
with `invoke` in this repository's checkout on HOST (made by
`fab -H HOST remote.bootstrap`).
"""

import importlib.util
import sys
from pathlib import Path

# tasks.py must load as the module `tasks` (it then acts as the tasks/ package),
# as Invoke's loader does; a plain import would find the empty tasks/ package.
_spec = importlib.util.spec_from_file_location("tasks", Path(__file__).with_name("tasks.py"))
_tasks = importlib.util.module_from_spec(_spec)
sys.modules["tasks"] = _tasks
_spec.loader.exec_module(_tasks)

# Fabric reads FABRIC_* variables, not INVOKE_*: the project's are for the laptop-side configuration.
_tasks._common.restore_project_variables()

ns = _tasks.ns
