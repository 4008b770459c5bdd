"""Resolve the layered configuration of one machine, with the source of every value.

Layers, lowest first:

1. ``invoke.yaml`` in the repository: project defaults.
2. ``machines/<machine>.yaml`` and the profiles it ``inherits`` from: machine facts.
3. The user's override file outside the repository (``user_config``,
   by default ``~/.config/titanenv/config.yaml``; a missing file is fine).
4. ``INVOKE_*`` environment variables, named like Invoke names them
   (``INVOKE_SLURM_NODES`` sets ``slurm.nodes``).
5. Command-line flags of the task being run.

The machine is chosen by the ``machine`` key, read from flags, then
``INVOKE_MACHINE``, then the user file, then ``invoke.yaml``.
"""

from __future__ import annotations

import difflib
import getpass
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, get_args, get_origin

from pydantic import BaseModel, ValidationError

from titanenv.config.paths import PATH_NAMES, Paths, expand_template, path_problem
from titanenv.config.schema import Settings
from titanenv.config.sources import (
    KeyPath,
    Layer,
    Source,
    dotted,
    iter_leaves,
    load_yaml_layer,
    merge_layers,
    set_path,
    source_of,
)
from titanenv import yamlfile
from titanenv.errors import ConfigError

PROJECT_FILE = "invoke.yaml"
MACHINES_DIR = "machines"
ENV_PREFIX = "INVOKE_"
DEFAULT_USER_CONFIG = "~/.config/titanenv/config.yaml"
_MACHINE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Keys that pick layers; they cannot be set by the layers they pick.
_SELECTORS = ("machine", "user_config")
# Invoke's own top-level config keys, which may appear in invoke.yaml untouched.
INVOKE_KEYS = frozenset({"run", "runners", "sudo", "tasks", "timeouts"})


@dataclass(frozen=True)
class Config:
    """The resolved configuration: typed settings, derived paths, provenance."""

    settings: Settings
    paths: Paths
    repo_root: Path
    machine_chain: tuple[str, ...]
    files_read: tuple[str, ...]
    user: str
    arch: str
    cores_per_node: int
    sources: Mapping[str, Source] = field(default_factory=dict)
    # Dotted keys whose value in the merged layers is not a mapping: a shorthand
    # like `debug: develbooster` then also sets `debug.partition`.
    scalar_keys: frozenset[str] = frozenset()

    @property
    def machine(self) -> str:
        return self.settings.machine

    def origin(self, key: str) -> str:
        """Where ``key`` (dotted) got its value: a file and line, env, flag, or default."""
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            if prefix in self.sources:
                if end == len(parts) or prefix in self.scalar_keys:
                    return str(self.sources[prefix])
                return "default"
        return "default"

    def placeholders(self) -> dict[str, str]:
        """Values that ``{name}`` in path-like settings can refer to."""
        values = placeholder_table(self.settings, repo=str(self.repo_root), home=str(Path.home()), user=self.user, arch=self.arch)
        values.update({name: str(path) for name, path in self.paths.as_dict().items()})
        return values

    def expand(self, template: str, key: str) -> str:
        """Expand ``{placeholders}`` and ``~`` in the setting ``key``."""
        expanded = expand_template(template, self.placeholders(), key=key, source=self.origin(key))
        return os.path.expanduser(expanded)

    def recipe_path(self) -> Path:
        """The training TOML (see :meth:`recipe_key`), expanded."""
        key = self.recipe_key()
        value = self.settings.train.config if key == "train.config" else getattr(
            self.settings.train.auto_config, key.rpartition(".")[2])
        return self.expand_path(value, key)

    def shown_recipe(self) -> tuple[str, str]:
        """:meth:`recipe_path` and where it came from, for config.show (which shows a bad value, not only fails)."""
        recipe = self.recipe_key()
        try:
            path = str(self.recipe_path())
        except ConfigError as exc:
            return "?", str(exc)
        if recipe == "train.config":
            return path, recipe
        return path, f"train.config auto -> {recipe} (cluster.gpus_per_node {self.settings.cluster.gpus_per_node})"

    def expand_path(self, template: str, key: str) -> Path:
        """Like :meth:`expand`, for a path; relative paths are relative to the repository."""
        path = Path(self.expand(template, key))
        return path if path.is_absolute() else self.repo_root / path

    def recipe_key(self) -> str:
        """The setting that names the training TOML: train.config, or for ``auto`` the one
        of train.auto_config that fits the machine (gpu where cluster.gpus_per_node > 0)."""
        if self.settings.train.config != "auto":
            return "train.config"
        return f"train.auto_config.{'gpu' if self.settings.cluster.gpus_per_node else 'cpu'}"

    def items(self) -> Iterator[tuple[str, Any, str]]:
        """``(key, value, source)`` for every resolved leaf, then the derived paths."""
        data = self.settings.model_dump(mode="python")
        for path, value in iter_leaves(data):
            key = dotted(path)
            yield key, value, self.origin(key)
        for name, value in self.paths.as_dict().items():
            yield f"derived.{name}", str(value), f"paths.{name} ({self.origin('paths.' + name)})"
        yield "derived.user", self.user, "settings.user" if self.settings.user else "login name"
        yield ("derived.train_config", *self.shown_recipe())
        yield "derived.arch", self.arch, "cluster.cpu_arch" if self.settings.cluster.cpu_arch != "auto" else "this host"
        yield "derived.cores_per_node", self.cores_per_node, (
            "cluster.cores_per_node" if self.settings.cluster.cores_per_node != "auto" else "this host"
        )


@dataclass(frozen=True)
class MachineProfile:
    """A profile file as listed by ``config.machines``: name, parent, description."""

    name: str
    inherits: str | None
    abstract: bool
    description: str


def machine_profiles(repo_root: Path) -> list[MachineProfile]:
    """Every profile in ``machines/``, read shallowly (no validation)."""
    profiles = []
    for path in sorted((repo_root / MACHINES_DIR).glob("*.yaml")):
        try:
            data = yamlfile.load(path.read_text(encoding="utf-8"), f"{MACHINES_DIR}/{path.name}") or {}
        except (OSError, UnicodeDecodeError, ConfigError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        cluster = data.get("cluster") if isinstance(data.get("cluster"), dict) else {}
        profiles.append(
            MachineProfile(
                name=path.stem,
                inherits=data.get("inherits"),
                abstract=bool(data.get("abstract", False)),
                description=str(cluster.get("description", "")),
            )
        )
    return profiles


def known_machines(repo_root: Path) -> list[str]:
    """Names of the profiles that can be chosen (shared bases excluded)."""
    return [p.name for p in machine_profiles(repo_root) if not p.abstract]


def load_config(
    repo_root: Path,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve and validate the configuration; raise ConfigError naming file and key.

    ``flags`` maps dotted keys (``slurm.nodes``) to values given on the
    command line; None values are ignored so tasks can pass every option.
    """
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    repo_root = repo_root.resolve()

    project = load_yaml_layer(repo_root / PROJECT_FILE, PROJECT_FILE, "project")
    for key in project.data:
        if key == "cluster":
            raise ConfigError(
                "machine facts belong in machines/*.yaml, not in the project defaults",
                source=str(project.sources[(key,)]),
                key=key,
            )
    for key in INVOKE_KEYS:
        project.data.pop(key, None)
    flag_layer = _flag_layer(flags)

    user_config, user_config_source = _selector("user_config", flag_layer, environ, [project])
    user_path = Path(os.path.expanduser(str(user_config or DEFAULT_USER_CONFIG)))
    user = Layer("user")
    if user_path.is_file():
        user = load_yaml_layer(user_path, str(user_config or DEFAULT_USER_CONFIG), "user")
        _reject_keys(user, ("user_config",), "the user file cannot name itself; set it in invoke.yaml or INVOKE_USER_CONFIG")
    elif user_config_source is not None and user_config_source.label != PROJECT_FILE:
        raise ConfigError(f"user config file {str(user_path)!r} does not exist", source=str(user_config_source), key="user_config")

    machine, machine_source = _selector("machine", flag_layer, environ, [user, project])
    machine_layers = _machine_chain(repo_root, str(machine), machine_source)
    for layer in machine_layers:
        _reject_keys(layer, _SELECTORS, "a machine profile cannot choose the machine or the user file")

    lower = merge_layers([project, *machine_layers, user])
    env_layer = _env_layer(environ, lower)
    merged = merge_layers([project, *machine_layers, user, env_layer, flag_layer])

    files = [PROJECT_FILE, *(layer.name.removeprefix("machine:") for layer in machine_layers)]
    if user.data or user_path.is_file():
        files.append(str(user_path))
    settings = _validate(merged)
    return _derive(settings, merged, repo_root, tuple(l.name.removeprefix("machine:") for l in machine_layers), tuple(files))


# --- layers ------------------------------------------------------------------


def _flag_layer(flags: Mapping[str, Any]) -> Layer:
    layer = Layer("flags")
    for key, value in flags.items():
        path = tuple(key.split("."))
        set_path(layer.data, path, value)
        layer.sources[path] = Source(f"flag --{path[-1].replace('_', '-')}")
    return layer


def _selector(
    key: str, flags: Layer, environ: Mapping[str, str], layers: list[Layer]
) -> tuple[Any, Source | None]:
    if key in flags.data:
        return flags.data[key], flags.sources[(key,)]
    env_name = ENV_PREFIX + key.upper()
    if environ.get(env_name):
        return environ[env_name], Source(f"env {env_name}")
    for layer in layers:
        if key in layer.data:
            return layer.data[key], layer.sources.get((key,))
    return None, None


def _reject_keys(layer: Layer, keys: tuple[str, ...], why: str) -> None:
    for key in keys:
        if key in layer.data:
            raise ConfigError(why, source=str(layer.sources[(key,)]), key=key)


def _machine_chain(repo_root: Path, name: str, chosen_at: Source | None) -> list[Layer]:
    """The profile and its ancestors, base first."""
    chain: list[Layer] = []
    seen: list[str] = []
    where = str(chosen_at) if chosen_at else None
    key = "machine"
    while True:
        if not _MACHINE_NAME.match(name):
            raise ConfigError(f"{name!r} is not a machine name (lower-case letters, digits, - and _)", source=where, key=key)
        if name in seen:
            raise ConfigError(f"inheritance cycle: {' -> '.join([*seen, name])}", source=where, key=key)
        path = repo_root / MACHINES_DIR / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(known_machines(repo_root)) or "none"
            raise ConfigError(
                f"no machine profile {MACHINES_DIR}/{name}.yaml (known: {known})", source=where, key=key
            )
        layer = load_yaml_layer(path, f"{MACHINES_DIR}/{name}.yaml", f"machine:{name}")
        parent = layer.data.pop("inherits", None)
        parent_source = layer.sources.pop(("inherits",), None)
        abstract = layer.data.pop("abstract", False)
        layer.sources.pop(("abstract",), None)
        if abstract and not seen:
            children = ", ".join(p.name for p in machine_profiles(repo_root) if p.inherits == name)
            raise ConfigError(
                f"{MACHINES_DIR}/{name}.yaml is a shared base, not a machine; choose one of: {children}",
                source=where,
                key=key,
            )
        chain.append(layer)
        seen.append(name)
        if parent is None:
            break
        if not isinstance(parent, str):
            raise ConfigError("must be the name of another machine profile", source=str(parent_source), key="inherits")
        name, where, key = parent, str(parent_source), "inherits"
    return list(reversed(chain))


def _leaf_kinds(model: type[BaseModel], path: KeyPath = ()) -> Iterator[tuple[KeyPath, bool]]:
    """Every settable leaf of the schema, with whether it takes a raw string."""
    for name, info in model.model_fields.items():
        here = (*path, name)
        annotation = info.annotation
        candidates = [a for a in (get_args(annotation) or (annotation,)) if a is not type(None)]
        nested = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            yield from _leaf_kinds(nested[0], here)
        elif get_origin(annotation) is dict:
            continue  # keys come from the data; see _env_layer
        else:
            yield here, annotation is str


def _env_layer(environ: Mapping[str, str], lower: Layer) -> Layer:
    """Values from ``INVOKE_*`` variables for every key the schema or data knows."""
    kinds: dict[KeyPath, bool] = dict(_leaf_kinds(Settings))
    for path, value in iter_leaves(lower.data):
        kinds.setdefault(path, isinstance(value, str))
    by_name = {ENV_PREFIX + "_".join(path).upper(): (path, raw) for path, raw in kinds.items()}
    sections = {path[0].upper() for path in kinds if len(path) > 1}
    layer = Layer("env")
    for name, raw_value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name in by_name:
            path, takes_raw = by_name[name]
            if path[0] in _SELECTORS:
                value: Any = raw_value
            elif takes_raw:
                value = raw_value
            else:
                try:
                    value = yamlfile.load(raw_value, f"env {name}")
                except ConfigError as exc:
                    # A parse error, or aliases that would expand past the bound.
                    why = "cannot parse the value as YAML" if exc.message.startswith("invalid YAML") else exc.message
                    raise ConfigError(why, source=f"env {name}", key=dotted(path)) from None
            set_path(layer.data, path, value)
            layer.sources[path] = Source(f"env {name}")
        elif name[len(ENV_PREFIX):].split("_", 1)[0] in sections:
            candidates = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean {candidates[0]}?)" if candidates else ""
            raise ConfigError(f"names no configuration key{hint}", source=f"env {name}")
    return layer


# --- validation --------------------------------------------------------------


def _validate(merged: Layer) -> Settings:
    try:
        return Settings.model_validate(merged.data)
    except ValidationError as exc:
        raise _first_error(exc, merged) from None


def _key_path(data: Any, loc: tuple[Any, ...]) -> tuple[KeyPath, tuple[Any, ...]]:
    """Split a pydantic location into the part that exists in the data and the rest."""
    path: list[str] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(str(part))
            node = node[part]
        else:
            return tuple(path), loc[index:]
    return tuple(path), ()


def _first_error(exc: ValidationError, merged: Layer) -> ConfigError:
    # A misspelt key also makes the real one "missing"; report the typo first.
    errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    path, rest = _key_path(merged.data, tuple(first["loc"]))
    key = dotted(tuple(p for p in path if not p.isdigit()))
    index = "".join(f"[{p}]" for p in path if p.isdigit())
    source = source_of(merged.sources, tuple(p for p in path if not p.isdigit()))
    kind = first["type"]
    if kind == "extra_forbidden":
        bad = str(rest[0]) if rest else (path[-1] if path else "?")
        parent_path = path if rest else path[:-1]
        full = dotted((*[p for p in parent_path if not p.isdigit()], bad))
        siblings = _schema_keys(parent_path)
        close = difflib.get_close_matches(bad, siblings, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(siblings)})" if siblings else ""
        where = source_of(merged.sources, tuple(full.split(".")))
        return ConfigError(f"unknown key{hint}", source=str(where) if where else None, key=full)
    if kind == "missing":
        missing = dotted((*path, *[str(p) for p in rest]))
        home = "machines/<machine>.yaml" if missing.startswith("cluster.") else PROJECT_FILE
        return ConfigError(f"missing; set it in {home}", source=str(source) if source else None, key=missing)
    same = [e for e in errors if _key_path(merged.data, tuple(e["loc"]))[0] == path]
    messages = list(dict.fromkeys(_clean_message(e) for e in same))
    value = first.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    return ConfigError(" or ".join(messages) + shown, source=str(source) if source else None, key=key + index)


def _clean_message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    message = message.replace("Input should be", "expected")
    return message[0].lower() + message[1:] if message else message


def _schema_keys(path: KeyPath) -> list[str]:
    model: Any = Settings
    for part in path:
        if part.isdigit():
            continue
        info = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if info is None:
            return []
        args = [a for a in (get_args(info.annotation) or (info.annotation,)) if a is not type(None)]
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        model = nested[0] if nested else None
        # Annotated[Model, ...] (shorthand entries) unwrap to their model.
        if model is None:
            for arg in args:
                inner = [a for a in get_args(arg) if isinstance(a, type) and issubclass(a, BaseModel)]
                if inner:
                    model = inner[0]
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


# --- derived values ----------------------------------------------------------


def placeholder_table(
    settings: Settings, *, repo: str | None, home: str, user: str, arch: str | None, expand_roots: bool = True
) -> dict[str, str]:
    """The ``{placeholders}`` of path-like settings, beside the derived directories (``paths.*``).

    The one table for this machine (:meth:`Config.placeholders`, the paths
    derived here) and for a remote host (``titanenv.remote.target``), which
    passes ``home="~"``, no ``repo``, no ``arch`` where the host detects it,
    and keeps its roots unexpanded.
    """
    cluster = settings.cluster
    roots = {"project_root": cluster.project_root, "scratch_root": cluster.scratch_root}
    if expand_roots:
        roots = {name: str(Path(root).expanduser()) for name, root in roots.items()}
    values = {
        "home": home,
        "user": user,
        "machine": settings.machine,
        "project": cluster.project,
        "env_name": settings.env_name,
        **roots,
    }
    if repo is not None:
        values["repo"] = repo
    if arch is not None:
        values["arch"] = arch
    return values


def _derive(
    settings: Settings, merged: Layer, repo_root: Path, chain: tuple[str, ...], files: tuple[str, ...]
) -> Config:
    cluster = settings.cluster
    user = settings.user or os.environ.get("USER") or getpass.getuser()
    arch = platform.machine() if cluster.cpu_arch == "auto" else cluster.cpu_arch
    cores = len(os.sched_getaffinity(0)) if cluster.cores_per_node == "auto" else cluster.cores_per_node
    sources = {dotted(path): source for path, source in merged.sources.items()}
    scalar_keys = frozenset(dotted(path) for path, _ in iter_leaves(merged.data))

    for key in ("project_root", "scratch_root"):
        value = os.path.expanduser(getattr(cluster, key))
        problem = path_problem(value)
        if problem:
            raise ConfigError(problem, source=str(sources.get(f"cluster.{key}", "")) or None, key=f"cluster.{key}")

    values = placeholder_table(settings, repo=str(repo_root), home=str(Path.home()), user=user, arch=arch)
    resolved: dict[str, Path] = {}
    for name in PATH_NAMES:
        key = f"paths.{name}"
        source = str(sources[key]) if key in sources else None
        text = os.path.expanduser(expand_template(getattr(settings.paths, name), values, key=key, source=source))
        problem = path_problem(text)
        if problem:
            raise ConfigError(problem, source=source, key=key)
        resolved[name] = Path(os.path.normpath(text))
        values[name] = str(resolved[name])
    return Config(
        settings=settings,
        paths=Paths(**resolved),
        repo_root=repo_root,
        machine_chain=chain,
        files_read=files,
        user=user,
        arch=arch,
        cores_per_node=cores,
        sources=sources,
        scalar_keys=scalar_keys,
    )
