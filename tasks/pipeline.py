"""The main job: the whole local pipeline on the configured machine."""

from tasks import data as data_tasks
from tasks import research as research_tasks
from tasks import train as train_tasks
from tasks._common import MACHINE_HELP, load, task


def _stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


@task(help={"machine": MACHINE_HELP, "steps": "Training steps (default: the training TOML's)."})
def pipeline(c, machine=None, steps=None):
    """Run the main job end to end: tokenize both splits, train with validation, report, export, sample."""
    import json
    import time

    from titanenv.data.indexed import IndexedDataset, bin_path, idx_path
    from titanenv.research.experiment import find_checkpoint, find_experiment
    from titanenv.research.export import default_output
    from titanenv.research.report import run_report

    started = time.monotonic()
    config = load({"machine": machine})
    data = config.settings.data
    datasets = {}
    for part, valid, template, key in (("training", False, data.output, "data.output"),
                                       ("validation", True, data.valid_output, "data.valid_output")):
        _stage(f"data: the {part} part")
        prefix = config.expand_path(template, key)
        if bin_path(prefix).exists() and idx_path(prefix).exists():
            print(f"{prefix}.bin/.idx exists; keeping it (data.preprocess{' --valid' if valid else ''} --overwrite "
                  "remakes it)")
        else:
            data_tasks.preprocess(c, machine=machine, local=True, valid=valid)
        datasets[part] = prefix

    _stage("train (validation loss at step 1 and every [validator] freq steps)")
    train_tasks.run(c, machine=machine, steps=steps)

    _stage("report")
    experiment = find_experiment(config)
    lines, figure = run_report(config, experiment)
    print("\n".join(lines))

    _stage("export")
    step, _ = find_checkpoint(experiment.checkpoint_folder)
    export = default_output(experiment.checkpoint_folder, step)
    if (export / "config.json").is_file():
        print(f"{export} exists; keeping it (research.export --overwrite remakes it)")
    else:
        research_tasks.export(c, machine=machine, local=True)

    _stage("sample")
    research_tasks.sample(c, machine=machine, hf=str(export))

    _stage(f"done in {time.monotonic() - started:.0f} s")
    validation = json.loads(figure.with_suffix(".json").read_text())["series"].get("validation_loss", {})
    rows = []
    for part, prefix in datasets.items():
        dataset = IndexedDataset(prefix)
        rows.append((f"{part} data", f"{prefix}.bin/.idx ({dataset.document_count:,} documents, "
                                     f"{dataset.num_tokens:,} tokens)"))
        dataset.close()
    rows += [
        ("checkpoints", f"{experiment.checkpoint_folder} (latest step-{step}; a later train.run resumes there)"),
        ("validation loss", ", ".join(f"{validation[s]:.4f} (step {s})" for s in sorted(validation, key=int)) or "-"),
        ("export", f"{export} (Hugging Face Llama: transformers' AutoModelForCausalLM loads it)"),
        ("report", f"{figure} (and .json beside it)"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {text}" for name, text in rows))
    print("next:")
    for command, why in (
        ("invoke research.sample --prompt 'The city council' --temperature 0.8", "more samples"),
        ("invoke train.run --name longer --steps 400", "a longer training of the same model"),
        ("invoke data.preprocess --input 'my/*.jsonl.zst' --output '{data_dir}/mine/all' && "
         "invoke data.split --prefix '{data_dir}/mine/all' --valid-fraction 0.05", "your own corpus, 5 % held out"),
        ("invoke train.submit --machine jwb --nodes 2", "the GPU recipe on a cluster (README: Training)"),
    ):
        print(f"  {command}    # {why}")
