"""How ``fab -H HOST TASK [options] TASK ...`` runs this project's tasks on HOST.

Fabric would run each task body on the laptop, executing only its ``c.run``
calls on the host (and pre/post tasks locally). A task here does its work in
Python, so instead every run of consecutive tasks is handed, as one command
line, to ``invoke`` in the project's checkout on the host: one SSH command,
one remote process, Invoke's own semantics (pre/post tasks, deduplication,
stop at the first failure). Output streams as it comes, on a pseudo-terminal
so that Ctrl-C stops the remote command, and the first failing remote exit
status is ``fab``'s.

Tasks marked ``laptop_side`` (``remote.bootstrap``, ``remote.status``) run
here instead: they manage the checkout that the others need, given the
host's connection as their context.

``fabric.yaml`` names this class as ``tasks.executor_class``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import fabric
from invoke import Call, Exit
from invoke.parser import ParserContext

from titanenv.errors import TitanEnvError

def context_argv(context: ParserContext) -> list[str]:
    """The command line that gives a task the arguments parsed into ``context``."""
    argv = [context.name]
    seen: set[int] = set()
    for arg in context.args.values():
        if id(arg) in seen or not arg.got_value:
            continue
        seen.add(id(arg))
        flag = "--" + max(arg.names, key=len) if len(max(arg.names, key=len)) > 1 else "-" + arg.names[0]
        value = arg.value
        if arg.kind is bool:
            argv.append(flag if value else "--no-" + max(arg.names, key=len))
        elif arg.kind is list:
            argv += [f"{flag}={item}" for item in value]
        elif arg.incrementable:
            argv += [flag] * int(value or 0)
        elif arg.optional and value is True:
            argv.append(flag)
        else:
            argv.append(f"{flag}={value}")
    return argv


@dataclass
class Step:
    """Tasks run in one remote invoke, or one laptop-side task."""

    remote_argv: list[str] = field(default_factory=list)
    laptop_call: Call | None = None


def plan(contexts: Iterable[ParserContext], calls: Iterable[Call]) -> list[Step]:
    steps: list[Step] = []
    for context, call in zip(contexts, calls):
        if getattr(call.task, "laptop_side", False):
            steps.append(Step(laptop_call=call))
        elif steps and steps[-1].laptop_call is None:
            steps[-1].remote_argv += context_argv(context)
        else:
            steps.append(Step(remote_argv=context_argv(context)))
    return steps


class ProjectExecutor(fabric.Executor):
    """Runs the parsed tasks on each ``-H`` host in turn (all of them per host)."""

    def execute(self, *tasks: Any) -> dict:
        try:
            self._execute(list(tasks))
        except TitanEnvError as exc:
            raise Exit(f"error: {exc}", code=1) from None
        return {}

    def _execute(self, contexts: list[Any]) -> None:
        host_value = self.core[0].args.hosts.value
        hosts = [h.strip() for h in host_value.split(",") if h.strip()] if host_value else []
        remainder = self.core.remainder
        calls = self.normalize(contexts)
        steps = plan(contexts, calls)
        if not hosts:
            if any(step.laptop_call is None for step in steps) or remainder:
                raise Exit(
                    "error: fab runs tasks on a host: give one with -H HOST (to run them here, use invoke)", code=1
                )
            for step in steps:
                self._run_laptop_side(step.laptop_call, None)
            return
        from titanenv.remote.cache import TargetResolver
        from titanenv.git import has_local_changes, head_commit
        from titanenv.remote.session import RemoteSession

        # The repository is where fab found the fabfile.
        repo_root = Path(self.collection.loaded_from).resolve()
        resolver = TargetResolver(repo_root)
        commit = None
        for host in hosts:
            if len(hosts) > 1:
                print(f"[{host}]", file=sys.stderr, flush=True)
            with RemoteSession(repo_root, host, fab_config=self.config, resolver=resolver) as session:
                if commit is None and session.target.settings.check_commit:
                    commit = head_commit(repo_root)
                    if has_local_changes(repo_root):
                        print(
                            f"note: uncommitted changes here are not on the host; it runs commit {commit[:12]}",
                            file=sys.stderr,
                        )
                for step in steps:
                    if step.laptop_call is not None:
                        self._run_laptop_side(step.laptop_call, session)
                        continue
                    checked = commit if session.target.settings.check_commit else None
                    status = session.run_tasks(step.remote_argv, checked)
                    if status != 0:
                        raise Exit(code=status)
                if remainder:
                    status = session.run_command(remainder)
                    if status != 0:
                        raise Exit(code=status)

    def _run_laptop_side(self, call: Call, session: Any) -> None:
        """Call a laptop-side task with the host's session as its context (None: no -H)."""
        config = self.config
        config.load_collection(self.collection.configuration(call.called_as))
        context = session.connection if session is not None else call.make_context(config)
        if session is not None:
            # The task finds the session (and its open connection) here.
            context._set(titanenv_session=session)
        call.task(context, *call.args, **call.kwargs)
