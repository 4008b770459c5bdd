"""Prepare and inspect this repository's checkout on a login node (`fab -H HOST ...`).

Under `fab -H HOST` every other task runs in that checkout on HOST; these
run here and manage it. With plain `invoke`, name the host with --host.
"""

from invoke import Collection

from tasks._common import REPO_ROOT, task

HOST_HELP = "SSH host or alias from your ssh config (under `fab -H HOST`: that host)."


@task(
    help={
        "host": HOST_HELP,
        "force": "Stash uncommitted changes there, and keep a branch there that has other commits as a backup branch.",
        "reinstall": "Recreate the Python environment (.venv) there from scratch.",
        "accept_new_host_key": "Record the host's key on first use if known_hosts lacks it (a changed key is refused).",
    }
)
def bootstrap(c, host=None, force=False, reinstall=False, accept_new_host_key=False):
    """Clone or update this repository on the host at this commit and install its Python environment."""
    from titanenv.remote.bootstrap import bootstrap as bring_up_to_date
    from titanenv.remote.session import session_for

    with session_for(c, host, REPO_ROOT, accept_new_host_key=accept_new_host_key) as session:
        bring_up_to_date(session, force=force, reinstall=reinstall)


@task(help={"host": HOST_HELP})
def status(c, host=None):
    """Show the host's checkout: where, at which commit against this one, changes, Python environment."""
    from titanenv.remote.bootstrap import status as checkout_status
    from titanenv.remote.session import session_for

    with session_for(c, host, REPO_ROOT) as session:
        print("\n".join(checkout_status(session).lines()))


@task(
    help={
        "command": "Shell command to run there (one argument: quote it).",
        "host": HOST_HELP,
    }
)
def run(c, command, host=None):
    """Run a shell command in the host's checkout, on a terminal; its exit status is this task's."""
    from invoke import Exit

    from titanenv.remote.session import session_for

    with session_for(c, host, REPO_ROOT) as session:
        status = session.run_command(command, in_checkout=True)
    if status != 0:
        raise Exit(code=status)


# Run on the laptop under `fab -H HOST`, not inside the checkout they manage.
bootstrap.laptop_side = True
status.laptop_side = True
run.laptop_side = True

ns = Collection(bootstrap, status, run)
