"""The task tree: light to load, every option documented, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO_ROOT, run_invoke

HEAVY = ("torch", "torchtitan", "datasets", "tokenizers", "gigatoken", "numpy", "jinja2", "pydantic", "fabric", "paramiko")


def load_root_collection_in_subprocess(code: str) -> str:
    script = (
        "import sys\n"
        "from invoke import Config\n"
        "from invoke.loader import FilesystemLoader\n"
        f"module, _ = FilesystemLoader(start={str(REPO_ROOT)!r}, config=Config()).load('tasks')\n"
        "from invoke import Collection\n"
        "ns = Collection.from_module(module)\n" + code
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_listing_tasks_imports_nothing_heavy() -> None:
    out = load_root_collection_in_subprocess(
        "import json\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    assert json.loads(out) == []


def test_every_task_and_option_is_documented() -> None:
    out = load_root_collection_in_subprocess(
        "import json\n"
        "rows = []\n"
        "for name in ns.task_names:\n"
        "    task = ns[name]\n"
        "    params = list(task.argspec(task.body).parameters)\n"
        "    rows.append([name, bool((task.__doc__ or task.body.__doc__ or '').strip()), sorted(set(params) - set(task.help))])\n"
        "print(json.dumps(rows))\n"
    )
    rows = json.loads(out)
    assert rows, "no tasks found"
    for name, has_doc, undocumented in rows:
        assert has_doc, f"{name} has no docstring"
        assert undocumented == [], f"{name}: options without help: {undocumented}"


def test_invoke_list_reads_like_a_table_of_contents() -> None:
    result = run_invoke("--list")
    assert result.returncode == 0, result.stderr
    for name in ("config.show", "config.check", "config.machines"):
        assert name in result.stdout


def test_tasks_package_and_root_module_agree() -> None:
    """pytest imports tasks/ as a package; invoke loads tasks.py; both see the same modules."""
    import tasks.config

    assert tasks.config.ns.name is None or tasks.config.ns.name == "config"
    assert "show" in tasks.config.ns.task_names


def test_a_missing_extra_is_one_line_naming_it(tmp_path) -> None:
    """A login node's venv without the data extra: the task says which extra, no traceback."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoNumpy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'numpy':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _NoNumpy())\n"
    )
    result = run_invoke("data.inspect", env={"PYTHONPATH": str(tmp_path)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: numpy (of the 'data' extra) is missing from this Python")
    assert lines[0].endswith(f"pip install -e '{REPO_ROOT}[data]'")
