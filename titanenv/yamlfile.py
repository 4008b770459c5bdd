"""Reading YAML that a person wrote, without letting it hang or crash the tool.

PyYAML builds an alias (``*a``) as a second reference to the anchored value,
so loading is cheap; but everything that walks the result afterwards (the
line of every key, merging layers, validation, ``config.show``) expands every
reference. A few hundred bytes of nested aliases ("billion laughs": ten
aliases per level, six levels) then stand for a million values. Aliases stay
allowed, since reusing a list or a block is ordinary YAML, but what they add
is bounded: :func:`check_events` counts the values the document stands for
in one pass over the parser's events, with the size of every anchored node
remembered, so it never expands anything and costs the same as parsing. It
also refuses an alias inside the node it names (a structure that contains
itself) and nesting deeper than the composer's recursion can take.

This module imports only the standard library and PyYAML (which Invoke loads
anyway): ``tasks.py`` uses it before Invoke reads ``invoke.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

from titanenv.errors import ConfigError

# Values that aliases may add to one document (a value: a scalar, list or mapping; a key counts too).
ALIAS_LIMIT = 10_000
# Deeper than any configuration needs, shallower than PyYAML's recursive composer can take.
MAX_DEPTH = 100


def check_events(text: str, label: str) -> None:
    """Refuse ``text`` if its aliases expand past :data:`ALIAS_LIMIT` values, refer to their own
    node, or its nesting passes :data:`MAX_DEPTH`; ConfigError names ``label`` and the line."""
    sizes: dict[str, int] = {}  # anchor -> values its node stands for, aliases expanded
    stack: list[tuple[str | None, int]] = []  # open collections: (anchor, values before it)
    open_anchors: dict[str, int] = {}
    expanded = written = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, AliasEvent):
            if open_anchors.get(event.anchor):
                raise ConfigError(
                    f"alias *{event.anchor} is inside the node it names, a structure that contains itself",
                    source=f"{label}:{line}",
                )
            expanded += sizes.get(event.anchor, 1)  # an undefined one: the composer says so
            if expanded - written > ALIAS_LIMIT:
                raise ConfigError(
                    f"YAML aliases expand to more than {ALIAS_LIMIT} values beyond those written "
                    f"(here *{event.anchor}); write the values out instead",
                    source=f"{label}:{line}",
                )
        elif isinstance(event, ScalarEvent):
            expanded += 1
            written += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", source=f"{label}:{line}")
            stack.append((event.anchor, expanded))
            expanded += 1
            written += 1
            if event.anchor is not None:
                open_anchors[event.anchor] = open_anchors.get(event.anchor, 0) + 1
        elif isinstance(event, CollectionEndEvent):
            anchor, before = stack.pop()
            if anchor is not None:
                open_anchors[anchor] -= 1
                sizes[anchor] = expanded - before


def compose(text: str, label: str) -> tuple[yaml.Node | None, Any]:
    """``(root node, data)`` of one YAML document, checked first; YAML errors name the line."""
    try:
        check_events(text, label)
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", source=where) from None
    return root, data


def load(text: str, label: str) -> Any:
    """The data of one YAML document (``yaml.safe_load``), checked first."""
    return compose(text, label)[1]


# An anchor (&a) or alias (*a) starts a token: at a line's start or after
# white space or a flow indicator. A text with neither holds no alias.
_COMMENT_LINES = re.compile(r"^\s*#.*$", re.MULTILINE)
_MAY_HOLD_ALIASES = re.compile(r"(?:^|[\s\[{,])[&*][^\s,\[\]{}]", re.MULTILINE)


def check_tool_files(project_dir: Path) -> None:
    """Refuse ``invoke.yaml``/``fabric.yaml`` in ``project_dir`` as :func:`check_events` does.

    Invoke and Fabric read them with ``yaml.safe_load`` right after importing
    ``tasks.py``/``fabfile.py`` and expand every alias while merging them into
    their configuration, which nested aliases would keep busy for ever; they
    call this first. A missing, unreadable or unparsable file is left to them.
    """
    for name in ("invoke.yaml", "fabric.yaml"):
        try:
            text = (project_dir / name).read_text(encoding="utf-8")
            # Every `invoke` call reads these: skip the parse where no token can be an alias.
            if _MAY_HOLD_ALIASES.search(_COMMENT_LINES.sub("", text)):
                check_events(text, name)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
