"""The main job: the whole local pipeline on the configured machine."""

from tasks import data as data_tasks
from tasks import train as train_tasks
from tasks._common import MACHINE_HELP, task


@task(help={"machine": MACHINE_HELP, "steps": "Training steps (default: the training TOML's)."})
def pipeline(c, machine=None, steps=None):
    """Run the main job end to end: preprocess the corpus (kept if done), train the tiny model, checkpoint."""
    from titanenv.data.indexed import bin_path, idx_path

    from tasks._common import load

    config = load({"machine": machine})
    output = config.expand_path(config.settings.data.output, "data.output")
    if bin_path(output).exists() and idx_path(output).exists():
        print(f"data: {output}.bin/.idx exists; keeping it (data.preprocess --overwrite remakes it)")
    else:
        data_tasks.preprocess(c, machine=machine, local=True)
    train_tasks.run(c, machine=machine, steps=steps)
