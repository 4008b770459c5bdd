"""Configuration layers: YAML files read with the line of every key, and merging.

Each layer is a nested mapping plus, for every key path in it, the place it
came from, so that ``config.show`` can say where a value was set and an error
can name the file and line.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from titanenv import yamlfile
from titanenv.errors import ConfigError

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """Where a value was set: a file (and line), an environment variable, a flag."""

    label: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.label}:{self.line}" if self.line else self.label


@dataclass
class Layer:
    """One level of configuration: its data and the source of each key path."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    sources: dict[KeyPath, Source] = field(default_factory=dict)

    def get(self, path: KeyPath, default: Any = None) -> Any:
        node: Any = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def dotted(path: KeyPath) -> str:
    return ".".join(path)


def _walk_nodes(node: yaml.Node, label: str, path: KeyPath, out: dict[KeyPath, Source]) -> None:
    """Record the line of every mapping key below ``node``; reject duplicate keys."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                "duplicate key; YAML would silently keep only the last one",
                source=f"{label}:{line}",
                key=dotted((*path, key)),
            )
        seen.add(key)
        out[(*path, key)] = Source(label, line)
        _walk_nodes(value_node, label, (*path, key), out)


def load_yaml_layer(path: Path, label: str, name: str) -> Layer:
    """Read one YAML file into a layer. An empty file is an empty layer."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=label) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", source=label) from None
    # Aliases bounded before anything below walks the nodes (see titanenv.yamlfile).
    root, data = yamlfile.compose(text, label)
    if data is None:
        return Layer(name)
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of keys to values", source=f"{label}:1")
    sources: dict[KeyPath, Source] = {}
    _walk_nodes(root, label, (), sources)
    return Layer(name, data, sources)


def iter_leaves(data: Mapping[str, Any], path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Yield ``(path, value)`` for every non-mapping value; empty mappings are leaves."""
    for key, value in data.items():
        here = (*path, str(key))
        if isinstance(value, dict) and value:
            yield from iter_leaves(value, here)
        else:
            yield here, value


def set_path(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def merge_layers(layers: list[Layer]) -> Layer:
    """Deep-merge layers in order; later layers win.

    Mappings merge key by key; any other value (lists included) replaces what
    was there, and the replaced value's sources are dropped.
    """
    merged = Layer("merged")
    for layer in layers:
        _merge_into(merged, layer.data, layer.sources, ())
    return merged


def _merge_into(
    merged: Layer, data: Mapping[str, Any], sources: Mapping[KeyPath, Source], path: KeyPath
) -> None:
    for key, value in data.items():
        here = (*path, str(key))
        current = merged.get(here)
        if isinstance(value, dict) and isinstance(current, dict):
            if here in sources:
                merged.sources.setdefault(here, sources[here])
            _merge_into(merged, value, sources, here)
            continue
        for stale in [p for p in merged.sources if p[: len(here)] == here]:
            del merged.sources[stale]
        set_path(merged.data, here, copy.deepcopy(value))
        for sub, source in sources.items():
            if sub[: len(here)] == here:
                merged.sources[sub] = source


def source_of(sources: Mapping[KeyPath, Source], path: KeyPath) -> Source | None:
    """The source of ``path`` or of its nearest ancestor that has one."""
    for end in range(len(path), 0, -1):
        found = sources.get(path[:end])
        if found is not None:
            return found
    return None
