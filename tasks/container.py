"""Build, activate and use the container the software stack runs in."""

import sys

from invoke import Collection, Exit

from tasks._common import MACHINE_HELP, load, task

RUNTIME_HELP = "Container runtime: apptainer, singularity, docker, podman or none (default: the machine's)."
BINARY_HELP = "Runtime binary name or path (default: the machine's, else the runtime's name)."


def config_for(machine=None, runtime=None, binary=None, extra=None):
    """Resolve the configuration; --runtime also picks its binary unless --binary names one."""
    flags = {"machine": machine, "cluster.container_runtime": runtime, **(extra or {})}
    if runtime is not None:
        flags["cluster.container_binary"] = binary or ("" if runtime == "none" else runtime)
    elif binary is not None:
        flags["cluster.container_binary"] = binary
    return load(flags)


def images_or_note(config, verb):
    """The machine's container store; None, after saying so, where runtime none has no container.

    Runtime ``none`` runs jobs in the host venv, so the container steps of a
    chain (``container.build --offline container.activate env.setup ...``)
    succeed there with nothing to do, and the same chain runs on every machine.
    """
    from titanenv import container

    if not container.uses_container(config):
        print(f"runtime none on machine {config.machine}: no container to {verb}; jobs run in the host venv")
        return None
    return container.images(config)


def argv_after_dashes(fallback=""):
    """The words after ``--`` on the command line, exactly as the shell passed them.

    Invoke joins them into one string (losing quoting), so they are read from
    ``sys.argv``; without ``--``, ``fallback`` is split like a shell would.
    """
    import shlex

    if "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1:]
    return shlex.split(fallback) if fallback else []


@task(
    help={
        "machine": MACHINE_HELP,
        "runtime": RUNTIME_HELP,
        "binary": BINARY_HELP,
        "offline": "Build from the archive `container.download` made (container.archive_dir), without network.",
        "force": "Replace a built container that was not activated yet.",
    }
)
def build(c, machine=None, runtime=None, binary=None, offline=False, force=False):
    """Build the container at the build path (pull the pinned image, or --offline from its archive)."""
    store = images_or_note(config_for(machine, runtime, binary), "build")
    if store is None:
        return
    where = store.build(offline=offline, force=force)
    print(f"built {where}; make it the active container with: invoke container.activate")


@task(
    help={
        "machine": MACHINE_HELP,
        "runtime": RUNTIME_HELP,
        "binary": BINARY_HELP,
        "force": "Download again over an existing archive.",
    }
)
def download(c, machine=None, runtime=None, binary=None, force=False):
    """Save the pinned image as an archive for offline builds (on a machine with network)."""
    store = images_or_note(config_for(machine, runtime, binary), "download")
    if store is None:
        return
    where = store.download(force=force)
    print(f"saved {where} (+ .sha256); copy it to container.archive_dir there and run: invoke container.build --offline")


@task(
    help={
        "machine": MACHINE_HELP,
        "runtime": RUNTIME_HELP,
        "binary": BINARY_HELP,
        "rollback": "Restore the previous active container instead (the current one becomes previous).",
    }
)
def activate(c, machine=None, runtime=None, binary=None, rollback=False):
    """Make the built container the active one, keeping the replaced one for --rollback."""
    store = images_or_note(config_for(machine, runtime, binary), "roll back" if rollback else "activate")
    if store is None:
        return
    if rollback:
        print(f"rolled back: {store.rollback()} is the previous container again")
    else:
        print(f"activated {store.activate()}")


@task(help={"machine": MACHINE_HELP, "runtime": RUNTIME_HELP, "binary": BINARY_HELP})
def status(c, machine=None, runtime=None, binary=None):
    """Show the built, active and previous containers."""
    store = images_or_note(config_for(machine, runtime, binary), "show")
    if store is None:
        return
    for state in store.status():
        print(state.line())


@task(
    help={
        "machine": MACHINE_HELP,
        "runtime": RUNTIME_HELP,
        "binary": BINARY_HELP,
        "command": "Command as one string (split like a shell); better: put the words after `--`.",
        "dry": "Print the command line instead of running it.",
    }
)
def run(c, machine=None, runtime=None, binary=None, command="", dry=False):
    """Run a command in the active container with the venv activated: invoke container.run -- CMD ARGS..."""
    from titanenv import container

    config = config_for(machine, runtime, binary)
    argv = argv_after_dashes(command)
    if dry:
        _print_invocation(config, argv)
        return
    code = container.run(config, argv)
    if code:
        raise Exit(code=code)


@task(help={"machine": MACHINE_HELP, "runtime": RUNTIME_HELP, "binary": BINARY_HELP,
            "dry": "Print the command line instead of running it."})
def shell(c, machine=None, runtime=None, binary=None, dry=False):
    """Open an interactive shell in the active container with the venv activated."""
    from titanenv import container

    config = config_for(machine, runtime, binary)
    if dry:
        _print_invocation(config, ["bash", "-i"], interactive=True)
        return
    code = container.run(config, [], interactive=True)
    if code:
        raise Exit(code=code)


def _print_invocation(config, argv, interactive=False):
    import shlex

    from titanenv import container

    invocation = container.run_invocation(config, argv, interactive=interactive, tty=interactive)
    wrapped = container.host_shell(config).wrap(invocation.argv) if container.uses_container(config) else invocation.argv
    print(shlex.join(wrapped))


ns = Collection(build, download, activate, status, run, shell)
