"""Set up the software stack in the container: venv, pinned repositories, offline bundle."""

from invoke import Collection

from tasks._common import MACHINE_HELP, task
from tasks.container import BINARY_HELP, RUNTIME_HELP, argv_after_dashes, config_for


@task(
    help={
        "machine": MACHINE_HELP,
        "runtime": RUNTIME_HELP,
        "binary": BINARY_HELP,
        "update": "Move existing clones to their pins: fetch, stash local changes, check out, pop the stash.",
        "offline": "Install only from the offline bundle (env.bundle_dir): no network at all.",
        "dry": "Print the plan (clones, venv, every pip step with its constraints and environment) and do nothing.",
    }
)
def setup(c, machine=None, runtime=None, binary=None, update=False, offline=False, dry=False):
    """Create the venv in the container, clone the pinned repositories and install everything."""
    from titanenv.envsetup.setup import setup as run_setup

    run_setup(config_for(c, machine, runtime, binary), offline=offline, update=update, dry=dry)


@task(
    help={
        "machine": MACHINE_HELP,
        "runtime": RUNTIME_HELP,
        "binary": BINARY_HELP,
    }
)
def download(c, machine=None, runtime=None, binary=None):
    """Download every wheel and bundle every pinned repository for env.setup --offline (pip download args after --)."""
    from titanenv.envsetup.setup import download as run_download

    run_download(config_for(c, machine, runtime, binary), argv_after_dashes())


@task(name="verify-bundle", help={"machine": MACHINE_HELP})
def verify_bundle(c, machine=None):
    """Check the offline bundle against its checksums and the configured pins."""
    from titanenv.envsetup.setup import verify_bundle as run_verify

    summary = run_verify(config_for(c, machine))
    pins = ", ".join(f"{name}@{info.get('ref')}" for name, info in summary.repos.items())
    print(f"ok {summary.path}: {summary.files} files match MANIFEST.json ({summary.wheels} wheels; {pins or 'no repositories'})")


ns = Collection(setup, download, verify_bundle)
