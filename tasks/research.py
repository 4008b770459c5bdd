"""After training: export a checkpoint to Hugging Face, print samples from it, report a run's metrics."""

from invoke import Collection

from tasks._common import MACHINE_HELP, SLURM_HELP, as_int, as_number, load, slurm_flags, task

COMMON_HELP = {
    "name": "Experiment name: checkpoints in {checkpoint_dir}/NAME (train.name; default: the TOML's name).",
    "step": "Checkpoint step (step-N); default: the latest.",
    "config": "TOML the model is built from; default: the one the newest training run of NAME ran with, "
              "else train.config.",
    "machine": MACHINE_HELP,
}


@task(help={
    **COMMON_HELP,
    "output": "HF directory to write (default: {checkpoint_dir}/NAME/hf/step-N).",
    "dtype": "float32, bfloat16 or float16 (research.dtype; default: the recipe's training.mixed_precision_param).",
    "overwrite": "Replace an existing export.",
    "local": "Run here, in place, instead of submitting a job (the default on the local machine).",
    "submit": "Submit a Slurm job even on the local machine (large models).",
    **SLURM_HELP,
    "dry": "Print what would be exported (or the sbatch script); write and submit nothing.",
})
def export(c, name=None, step=None, config=None, output=None, dtype=None, overwrite=False, local=False, submit=False,
           nodes=None, time=None, partition=None, account=None, job_name=None, dependency=None, dry=False,
           machine=None):
    """Convert a checkpoint into a Hugging Face Llama directory (safetensors, config, tokenizer)."""
    from titanenv.research.jobs import ExportOptions, export as run_export

    settings = load({"machine": machine, "train.name": name,
                        **slurm_flags(nodes, time, partition, account, job_name)})
    run_export(settings, ExportOptions(toml=config, step=as_number("step", step), output=output, dtype=dtype,
                                       overwrite=overwrite, local=local, submit=submit, dry=dry,
                                       dependency=dependency))


@task(help={
    **COMMON_HELP,
    "hf": "Sample from this exported HF directory instead of a checkpoint.",
    "prompt": "Text to continue (research.prompt).",
    "max_new_tokens": "New tokens at most (research.max_new_tokens).",
    "temperature": "0 for greedy decoding, else sample at this temperature (research.temperature).",
    "seed": "Seed of the sampling (research.seed).",
    "device": "cpu, cuda, cuda:N or auto (research.device).",
})
def sample(c, name=None, step=None, config=None, hf=None, prompt=None, max_new_tokens=None, temperature=None,
           seed=None, device=None, machine=None):
    """Print text generated from a checkpoint or an exported directory for a prompt (greedy or sampled)."""
    from titanenv.research import sample as sampling

    settings = load({"machine": machine, "train.name": name, "research.prompt": prompt,
                        "research.max_new_tokens": as_int(max_new_tokens), "research.device": device,
                        "research.temperature": as_number("temperature", temperature, float),
                        "research.seed": as_number("seed", seed)})
    research = settings.settings.research
    options = dict(prompt=research.prompt, max_new_tokens=research.max_new_tokens,
                   temperature=research.temperature, seed=research.seed, device=research.device)
    if hf:
        result = sampling.generate(settings.expand_path(hf, "--hf"), **options)
    else:
        from titanenv.research.experiment import find_experiment
        from titanenv.research.export import ExportRequest

        experiment = find_experiment(settings, config)
        request = ExportRequest(checkpoint_folder=experiment.checkpoint_folder, step=as_number("step", step),
                                job=experiment.job, output=None, dtype="float32")
        with sampling.exported_checkpoint(request) as directory:
            result = sampling.generate(directory, **options)
    print(f"# {result.mode}, {len(result.new_ids)} new token(s)")
    print(result.prompt + result.text)


@task(help={
    "name": COMMON_HELP["name"],
    "config": "TOML of the experiment (for its TensorBoard folder); default as for research.export.",
    "output": "PNG to write (default: report.png in the newest training run's directory of NAME); "
              "its figures go beside it as .json.",
    "machine": MACHINE_HELP,
})
def report(c, name=None, config=None, output=None, machine=None):
    """Print a run's steps, losses, tokens/s, MFU, wall time and checkpoints; plot its curves to a PNG."""
    from titanenv.research.experiment import find_experiment
    from titanenv.research.report import run_report

    settings = load({"machine": machine, "train.name": name})
    experiment = find_experiment(settings, config)
    lines, _figure = run_report(settings, experiment, settings.expand_path(output, "--output") if output else None)
    print("\n".join(lines))


ns = Collection(export, sample, report)
