"""The main job: the whole local pipeline on the configured machine."""

from tasks import config as config_tasks
from tasks._common import MACHINE_HELP, task


@task(help={"machine": MACHINE_HELP})
def pipeline(c, machine=None):
    """Run the main job end to end (validates the configuration of every machine)."""
    config_tasks.check(c, all=True)
