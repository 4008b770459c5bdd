"""Train with TorchTitan on the preprocessed datasets: here (train.run) or as a Slurm job (train.submit)."""

from invoke import Collection

from tasks._common import CHAIN_HELP, MACHINE_HELP, SLURM_HELP, as_int, as_number, load, slurm_flags, task

TRAIN_HELP = {
    "config": "Recipe TOML, e.g. train_configs/llama3_8b.toml (train.config; default auto: the CPU or GPU smoke "
              "recipe, by the machine's GPUs).",
    "name": "Experiment name: checkpoints in {checkpoint_dir}/NAME, resumed by later runs (train.name).",
    "steps": "Training steps (the TOML's training.steps).",
    "seq_len": "Tokens per sample (training.seq_len).",
    "batch_size": "Samples per process and step (training.local_batch_size).",
    "lr": "Peak learning rate (optimizer.lr).",
    "checkpoint_interval": "Steps between checkpoints (checkpoint.interval).",
    "procs_per_node": "torchrun processes per node; 0 means one per GPU (train.procs_per_node).",
    "dataset": "Dataset prefix written by data.preprocess (default: data.output).",
    "torchtitan": "Run this TorchTitan checkout's own entry point with --config as its own TOML, e.g. "
                  "'{repos_dir}/torchtitan' (train.torchtitan.checkout; default: ours, python -m titanenv.train).",
    "torchtitan_entry": "The checkout's entry point, relative to it (train.torchtitan.entry: torchtitan/train.py).",
    "toml_option": "Option that hands the checkout the TOML: --job.config_file (0.1, 0.2), or '' for its keys "
                   "as options (0.3 and later) (train.torchtitan.toml_option).",
    "machine": MACHINE_HELP,
}


def _config(c, machine, config, name, procs_per_node, dataset, torchtitan, torchtitan_entry, toml_option,
            extra=None):
    return load({
        "machine": machine,
        "train.config": config,
        "train.name": name,
        "train.procs_per_node": as_int(procs_per_node),
        "data.output": dataset,
        "train.torchtitan.checkout": torchtitan,
        "train.torchtitan.entry": torchtitan_entry,
        "train.torchtitan.toml_option": toml_option,
        **(extra or {}),
    })


def _request(steps, seq_len, batch_size, lr, checkpoint_interval, **kwargs):
    from titanenv.train.job import TrainRequest

    overrides = {
        "training.steps": as_number("steps", steps),
        "training.seq_len": as_number("seq-len", seq_len),
        "training.local_batch_size": as_number("batch-size", batch_size),
        "optimizer.lr": as_number("lr", lr, float),
        "checkpoint.interval": as_number("checkpoint-interval", checkpoint_interval),
    }
    return TrainRequest(overrides=overrides, **kwargs)


@task(help={**TRAIN_HELP, "dry": "Print the resolved TOML and the torchrun and torchtitan command lines; run nothing."})
def run(c, config=None, name=None, steps=None, seq_len=None, batch_size=None, lr=None, checkpoint_interval=None,
        procs_per_node=None, dataset=None, torchtitan=None, torchtitan_entry=None, toml_option=None, dry=False,
        machine=None):
    """Train here with torchrun on this machine's CPUs or GPUs (no Slurm); TorchTitan options after --."""
    from tasks.container import argv_after_dashes
    from titanenv.train.job import run_here

    settings = _config(c, machine, config, name, procs_per_node, dataset, torchtitan, torchtitan_entry, toml_option)
    status = run_here(settings, _request(steps, seq_len, batch_size, lr, checkpoint_interval, dry=dry,
                                         extra=argv_after_dashes()))
    if status:
        raise SystemExit(f"error: training exited with status {status}")


@task(help={**TRAIN_HELP, **SLURM_HELP, "chain": CHAIN_HELP,
            "dry": "Print the rendered sbatch script and the exact torchtitan command line; submit nothing."})
def submit(c, config=None, name=None, steps=None, seq_len=None, batch_size=None, lr=None, checkpoint_interval=None,
           procs_per_node=None, dataset=None, torchtitan=None, torchtitan_entry=None, toml_option=None, nodes=None,
           time=None, partition=None, account=None, job_name=None, dependency=None, chain=1, dry=False, machine=None):
    """Submit TorchTitan training as a Slurm job: torchrun on every node, c10d rendezvous on the first."""
    from tasks.container import argv_after_dashes
    from titanenv.train.job import submit as run_submit

    settings = _config(c, machine, config, name, procs_per_node, dataset, torchtitan, torchtitan_entry, toml_option,
                       slurm_flags(nodes, time, partition, account, job_name))
    run_submit(settings, _request(steps, seq_len, batch_size, lr, checkpoint_interval, dry=dry, chain=int(chain),
                                  dependency=dependency, extra=argv_after_dashes()))


ns = Collection(run, submit)
