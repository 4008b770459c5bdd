"""Any TorchTitan: a checkout's own entry point runs the job, with that TorchTitan's own TOML.

Selected by ``train.torchtitan.checkout`` (a clone such as a fork's
``{repos_dir}/torchtitan``, or an unpacked release). The launch path is the
same as for our own TorchTitan (sbatch, srun, container, launcher,
rendezvous, environment, chains); what follows the launcher's options is, as
in the original environment::

    <checkout>/torchtitan/train.py --job.config_file <TOML> --job.dump_folder {checkpoint_dir}/<name> [options]

The TOML is that TorchTitan's, so our ``[model]``/``[data]`` checks do not
apply; what is checked before anything starts: the entry point exists, the
TOML parses as TOML, the dump folder can be made, the job's Python imports
``torchtitan`` from the checkout (not some other installed one), and the
checkout's own config parser accepts the TOML and the options, in the job's
Python (inside the machine's container for a submission).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from titanenv.config import Config
from titanenv.errors import TitanEnvError
from titanenv.train.jobconfig import JobConfigError


class CheckoutError(TitanEnvError):
    """The TorchTitan checkout cannot run this job."""


@dataclass(frozen=True)
class Checkout:
    root: Path
    entry: Path
    toml_option: str  # "" = the TOML's keys become options
    dump_folder_option: str
    cpu_options: tuple[str, ...]


@dataclass
class CheckoutJob:
    checkout: Checkout
    path: Path  # the user's TOML
    name: str
    dump_folder: Path
    text: str  # the TOML as written; the job reads a copy
    toml_options: list[str] = field(default_factory=list)  # its keys as options (toml_option "")
    overrides: list[str] = field(default_factory=list)  # task flags (--steps ...) as options
    extra: list[str] = field(default_factory=list)  # after --, last so they win

    def args(self, toml: Path, *, cpu: bool) -> list[str]:
        """What follows ``torchrun [options]``: the entry point and everything TorchTitan reads."""
        checkout = self.checkout
        config = [checkout.toml_option, str(toml)] if checkout.toml_option else self.toml_options
        return [str(checkout.entry), *config, checkout.dump_folder_option, str(self.dump_folder),
                *(checkout.cpu_options if cpu else ()), *self.overrides, *self.extra]


def selected(config: Config) -> Checkout | None:
    """The configured checkout, or None for our own TorchTitan (``train.torchtitan.checkout: ""``)."""
    settings = config.settings.train.torchtitan
    if not settings.checkout:
        return None
    root = config.expand_path(settings.checkout, "train.torchtitan.checkout")
    return Checkout(root=root, entry=root / settings.entry, toml_option=settings.toml_option,
                    dump_folder_option=settings.dump_folder_option, cpu_options=tuple(settings.cpu_options))


def prepare(config: Config, checkout: Checkout, overrides: dict[str, Any], extra: list[str]) -> CheckoutJob:
    """Check what can be checked without knowing the checkout's config classes; the job to run."""
    if not checkout.root.is_dir():
        raise CheckoutError(f"train.torchtitan.checkout: {checkout.root}: no such directory "
                            "(a TorchTitan clone or unpacked release)")
    if not checkout.entry.is_file():
        raise CheckoutError(f"train.torchtitan.entry: no {checkout.entry.relative_to(checkout.root)} "
                            f"in the checkout {checkout.root}")
    settings = config.settings.train
    if settings.config == "auto":
        raise CheckoutError(f"train.config: auto picks one of this project's recipes; give the checkout "
                            f"{checkout.root} its own TOML (--config FILE)")
    path = config.expand_path(settings.config, "train.config")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise JobConfigError(f"{path}: no such training config (train.config)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JobConfigError(f"{path}: {exc}") from None
    name = settings.name or path.stem
    dump_folder = config.paths.checkpoint_dir / name
    check_dump_folder(dump_folder)
    flags = [word for dotted, value in overrides.items() if value is not None for word in (f"--{dotted}", str(value))]
    return CheckoutJob(checkout=checkout, path=path, name=name, dump_folder=dump_folder, text=text,
                       toml_options=[] if checkout.toml_option else options_of(raw, path),
                       overrides=flags, extra=list(extra))


def options_of(raw: dict[str, Any], path: Path) -> list[str]:
    """The TOML's keys as options: ``module = "llama3"`` -> --module llama3, ``[a] b = 1`` -> --a.b 1."""
    words: list[str] = []

    def visit(prefix: str, table: dict[str, Any]) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                visit(f"{name}.", value)
            elif isinstance(value, bool):
                # tyro's boolean flags: --a.b / --a.no-b
                words.append(f"--{name}" if value else f"--{prefix}no-{key}")
            elif isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):
                words.extend([f"--{name}", *(str(v) for v in value)])
            elif isinstance(value, (int, float, str)):
                words.extend([f"--{name}", str(value)])
            else:
                raise JobConfigError(f"{path}: {name}: a {type(value).__name__} value has no command-line form "
                                     "(train.torchtitan.toml_option is \"\")")

    visit("", raw)
    return words


def check_dump_folder(folder: Path) -> None:
    """The dump folder exists as a directory or can be made (its nearest existing parent is a writable directory)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CheckoutError(f"{folder}: cannot hold the job's checkpoints: {existing} is not a directory "
                            "(paths.checkpoint_dir, train.name)")
    if existing != folder and not os.access(existing, os.W_OK | os.X_OK):
        raise CheckoutError(f"{folder}: cannot be made: {existing} is not writable (paths.checkpoint_dir)")


# Run in the job's Python with the entry point's directory first on sys.path, as
# ``python ENTRY`` has it: which torchtitan it imports, and, where that is the
# checkout's, whether the checkout's own config parser accepts the job's options
# (0.2+: torchtitan.config.ConfigManager; 0.1: torchtitan.config_manager.JobConfig).
_CHECK_CHECKOUT = r"""
import contextlib, importlib.util, io, json, os, sys
entry_dir, package, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[0] = entry_dir
spec = importlib.util.find_spec("torchtitan")
origin = (spec.origin or "") if spec else ""
print("torchtitan=" + origin, flush=True)
if not origin or os.path.realpath(os.path.dirname(origin)) != os.path.realpath(package):
    sys.exit(0)
try:
    from torchtitan.config import ConfigManager
    parse = ConfigManager().parse_args
except ImportError as exc:
    if not (getattr(exc, "name", "") or "").startswith("torchtitan.config"):
        print("refused=" + json.dumps(f"cannot import its config parser: {type(exc).__name__}: {exc}"))
        sys.exit(0)
    try:
        from torchtitan.config_manager import JobConfig
        parse = JobConfig().parse_args
    except ImportError:
        print("parser=none")
        sys.exit(0)
errors = io.StringIO()
try:
    with contextlib.redirect_stderr(errors):
        parse(args)
except SystemExit:
    print("refused=" + json.dumps(errors.getvalue()))
except Exception as exc:
    print("refused=" + json.dumps(f"{type(exc).__name__}: {exc}"))
else:
    print("accepted")
"""


def check_checkout(config: Config, job: CheckoutJob, toml: Path, *, cpu: bool, here: bool) -> None:
    """The job's Python imports ``torchtitan`` from the checkout, and the checkout's parser accepts the job.

    Asks this Python (``here``: train.run) or the job's, where the job runs
    (the machine's container or venv: train.submit), so a misspelt key in
    the TOML or an option that TorchTitan does not know is one line before
    the job waits in the queue, not a traceback when it starts. A checkout
    without a ``torchtitan`` package (its entry point imports something
    else), or without a parser of a known name, is not checked.
    """
    checkout = job.checkout
    package = checkout.root / "torchtitan"
    if not (package / "__init__.py").is_file():
        return
    from titanenv.launch import job_launcher, job_python

    python = sys.executable if here else job_python(config)
    options = job.args(toml, cpu=cpu)[1:]  # without the entry point
    argv = [*([] if here else job_launcher(config)), python, "-c", _CHECK_CHECKOUT, str(checkout.entry.parent),
            str(package), *options]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=checkout.root)
    except OSError as exc:
        done = subprocess.CompletedProcess(argv, 127, "", str(exc))
    answers = {key: value for key, _, value in (line.partition("=") for line in done.stdout.splitlines())
               if key in ("torchtitan", "refused", "parser", "accepted")}  # not what the fork's import prints
    if done.returncode != 0 or "torchtitan" not in answers:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise CheckoutError(f"train.torchtitan.checkout: cannot ask the job's Python ({python}) which torchtitan "
                            f"it imports: {lines[-1] if lines else f'exit status {done.returncode}'}")
    origin = answers["torchtitan"]
    install = f"install the checkout there (pip install -e {checkout.root}, or name it in env.repos and run env.setup)"
    if not origin:
        raise CheckoutError(f"train.torchtitan.checkout: the job's Python ({python}) has no torchtitan; {install}")
    imported = Path(origin).parent
    if imported.resolve() != package.resolve():
        raise CheckoutError(f"train.torchtitan.checkout: the job's Python ({python}) imports torchtitan from "
                            f"{imported}, not from the checkout {checkout.root}; {install}")
    if "refused" in answers:
        import json

        raise CheckoutError(f"{job.path}: the TorchTitan of {checkout.root} refuses the job's configuration: "
                            f"{parser_problem(json.loads(answers['refused']))}")


_BOX = "│╭╮╰╯┃"


def parser_problem(text: str) -> str:
    """One line from what a TorchTitan config parser said: tyro's boxed message, or an exception's first line.

    tyro draws a box: a title (``╭─ Value error ─╮``), then sections
    separated by rules; the first section says what is wrong, a section
    ``Perhaps you meant:`` what was meant.
    """
    sections: list[list[str]] = [[]]
    boxed = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("╭", "╰")):
            boxed = True
            continue
        line = line.strip(_BOX).strip()
        if line and set(line) <= {"─", "━"}:
            sections.append([])
        elif line:
            sections[-1].append(line)
    sections = [s for s in sections if s]
    if not sections:
        return "it gave no reason"
    if not boxed:
        return sections[0][0]
    problem = " ".join(sections[0])
    for section in sections[1:]:
        if section[0].startswith("Perhaps you meant") and len(section) > 1:
            problem += f" (perhaps {section[1]})"
            break
    return problem
