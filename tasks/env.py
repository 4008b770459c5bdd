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

    run_setup(config_for(machine, runtime, binary), offline=offline, update=update, dry=dry)


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

    run_download(config_for(machine, runtime, binary), argv_after_dashes())


@task(name="verify-bundle", help={"machine": MACHINE_HELP})
def verify_bundle(c, machine=None):
    """Check the offline bundle against its checksums and the configured pins."""
    from titanenv.envsetup.setup import verify_bundle as run_verify

    summary = run_verify(config_for(machine))
    pins = ", ".join(f"{name}@{info.get('ref')}" for name, info in summary.repos.items())
    print(f"ok {summary.path}: {summary.files} files match MANIFEST.json ({summary.wheels} wheels; {pins or 'no repositories'})")


@task(
    name="hub-download",
    iterable=["model", "tokenizer", "dataset", "metric"],
    help={
        "machine": MACHINE_HELP,
        "runtime": RUNTIME_HELP,
        "binary": BINARY_HELP,
        "model": "Model to fetch, ID[@REVISION] (repeatable; replaces env.hub.models), e.g. gpt2.",
        "tokenizer": "Tokenizer files to fetch, ID[@REVISION] (repeatable; replaces env.hub.tokenizers).",
        "dataset": "Dataset to prepare, ID[@REVISION][:CONFIG[:SPLIT]] such as wikitext:wikitext-103-raw-v1, "
                   "or a local file/directory starting with / ./ ../ or ~ (repeatable; replaces env.hub.datasets).",
        "metric": "evaluate metric to fetch, NAME[@REVISION] (repeatable; replaces env.hub.metrics).",
        "trust_remote_code": "Also fetch models' and tokenizers' *.py (custom code) and allow community metrics "
                             "(default: env.hub.trust_remote_code, off).",
        "dry": "Print the plan (each item and where it lands, the step's environment and command); download nothing.",
    },
)
def hub_download(c, machine=None, runtime=None, binary=None, model=None, tokenizer=None, dataset=None, metric=None,
                 trust_remote_code=False, dry=False):
    """Download Hub models, tokenizers, datasets and metrics into the scratch caches jobs read offline."""
    from titanenv.envsetup.hub import download as run_download

    given = {"model": model, "tokenizer": tokenizer, "dataset": dataset, "metric": metric}
    run_download(config_for(machine, runtime, binary), given, trust_remote_code=trust_remote_code or None, dry=dry)


ns = Collection(setup, download, verify_bundle, hub_download)
