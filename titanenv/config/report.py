"""Human- and machine-readable views of a resolved configuration."""

from __future__ import annotations

import json
from typing import Any

from titanenv.config.loader import Config


def _display(value: Any) -> str:
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


def show_table(config: Config, prefix: str = "") -> str:
    """One line per value: key, value, and where it came from."""
    rows = [(k, _display(v), s) for k, v, s in config.items() if k.startswith(prefix)]
    if not rows:
        return ""
    key_width = max(len(r[0]) for r in rows)
    value_width = min(max(len(r[1]) for r in rows), 60)
    lines = [
        f"# machine {config.machine} (profiles: {' -> '.join(config.machine_chain)});"
        f" files read: {', '.join(config.files_read)}"
    ]
    for key, value, source in rows:
        lines.append(f"{key:<{key_width}}  {value:<{value_width}}  # {source}")
    return "\n".join(lines)


def as_data(config: Config) -> dict[str, Any]:
    """The resolved settings plus the derived paths, for --format json/yaml."""
    data = config.settings.model_dump(mode="json")
    data["derived"] = {name: str(path) for name, path in config.paths.as_dict().items()}
    data["derived"].update(user=config.user, train_config=config.shown_recipe()[0], arch=config.arch,
                           cores_per_node=config.cores_per_node)
    return data


def show_json(config: Config) -> str:
    return json.dumps(as_data(config), indent=2)


def show_yaml(config: Config) -> str:
    import yaml

    return yaml.safe_dump(as_data(config), sort_keys=False)
