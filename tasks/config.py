"""Inspect and validate the layered configuration."""

from invoke import Collection, Exit

from tasks._common import MACHINE_HELP, REPO_ROOT, load, task


@task(
    help={
        "machine": MACHINE_HELP,
        "key": "Show only keys starting with this prefix (e.g. cluster.partitions).",
        "format": "table (value and source of each key), yaml or json.",
    }
)
def show(c, machine=None, key="", format="table"):
    """Print the resolved configuration and where each value came from."""
    from titanenv.config import report

    config = load({"machine": machine})
    if format == "table":
        print(report.show_table(config, key))
    elif format == "yaml":
        print(report.show_yaml(config), end="")
    elif format == "json":
        print(report.show_json(config))
    else:
        raise Exit(f"error: --format {format!r}: use table, yaml or json", code=2)


@task(
    help={
        "machine": MACHINE_HELP,
        "all": "Check every machine profile, not just the configured one.",
    }
)
def check(c, machine=None, all=False):
    """Validate the configuration; exit non-zero naming the file and key at fault."""
    from titanenv.config import known_machines
    from titanenv.errors import ConfigError

    machines = known_machines(REPO_ROOT) if all else [machine]
    failed = 0
    for name in machines:
        try:
            config = load({"machine": name})
        except ConfigError as exc:
            failed += 1
            print(f"FAIL {name or 'configured machine'}: {exc}")
            continue
        print(f"ok   {config.machine}: {', '.join(config.files_read)}")
    if failed:
        raise Exit(code=1)


@task
def machines(c):
    """List the machine profiles and what they inherit from."""
    from titanenv.config import machine_profiles

    for profile in machine_profiles(REPO_ROOT):
        parent = f" (inherits {profile.inherits})" if profile.inherits else ""
        kind = "base" if profile.abstract else "    "
        print(f"{profile.name:<6} {kind} {profile.description}{parent}")


ns = Collection(show, check, machines)
