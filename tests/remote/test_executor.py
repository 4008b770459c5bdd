"""What `fab` sends to the host for a parsed command line (no SSH needed)."""

from __future__ import annotations

import shlex

from invoke import Collection, Config, Executor, task
from invoke.parser import Parser

from titanenv.remote.executor import context_argv, plan


@task(help={"key": "k", "format": "f", "verbose": "v", "dry": "d", "tag": "t", "color": "c"}, iterable=["tag"], incrementable=["verbose"])
def show(c, key="", format="table", verbose=0, dry=False, tag=None, color=True):
    """Show."""


@task(help={"name": "n"})
def build(c, name):
    """Build."""


@task(help={"host": "h"})
def bootstrap(c, host=None):
    """Laptop side."""


bootstrap.laptop_side = True
NS = Collection(show, build, Collection("remote", bootstrap))


def parse(command: str) -> list:
    parser = Parser(contexts=NS.to_contexts())
    return list(parser.parse_argv(shlex.split(command)))


def test_arguments_are_rebuilt_unambiguously() -> None:
    contexts = parse("show -k 'a b' --format=yaml -vv --dry -t x -t 'y z' --no-color build 'my image'")
    assert [context_argv(c) for c in contexts] == [
        ["show", "--key=a b", "--format=yaml", "--verbose", "--verbose", "--dry", "--tag=x", "--tag=y z", "--no-color"],
        ["build", "--name=my image"],
    ]
    # Parsing the rebuilt line gives the same values.
    for command in ("show -k 'a=b' -t '' --format ' x'", "build --name 'build'"):
        once = parse(command)
        twice = parse(shlex.join(sum((context_argv(c) for c in once), [])))
        assert [c.as_kwargs for c in twice] == [c.as_kwargs for c in once]


def test_consecutive_tasks_share_one_remote_invoke_and_laptop_side_tasks_split_them() -> None:
    contexts = parse("show build x remote.bootstrap show --dry")
    calls = Executor(NS, Config()).normalize(contexts)
    steps = plan(contexts, calls)
    assert [(s.remote_argv, s.laptop_call.task.name if s.laptop_call else None) for s in steps] == [
        (["show", "build", "--name=x"], None),
        ([], "bootstrap"),
        (["show", "--dry"], None),
    ]
