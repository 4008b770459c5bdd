"""Tokenize JSONL, Parquet or Arrow into Megatron-LM .bin/.idx datasets, and look inside them."""

from invoke import Collection

from tasks._common import MACHINE_HELP, SLURM_HELP, as_float, as_int, load, slurm_flags, task

OUTPUT_HELP = "Dataset prefix: PREFIX.bin + PREFIX.idx (data.output; {data_dir} and friends expand)."
TOKENIZER_HELP = "tokenizer.json, or a directory with it or with vocab.json + merges.txt (data.tokenizer)."


@task(
    iterable=["input"],
    help={
        "input": "Input: a file, a glob, or several joined by ':'; repeat for more (data.inputs). JSONL "
        "(.jsonl.gz and .jsonl.zst read as they are), Parquet (.parquet), Arrow (.arrow) or a directory "
        "saved by datasets' save_to_disk.",
        "tokenizer": TOKENIZER_HELP,
        "output": OUTPUT_HELP,
        "text_key": "JSON key of each line's text, or the column of a Parquet or Arrow input (data.text_key).",
        "backend": "auto, gigatoken or hf (data.backend); auto uses gigatoken where it loads the tokenizer.",
        "eod_token": "End-of-document token (data.eod_token; default: the tokenizer's end-of-text token).",
        "workers": "Worker processes per task; 0 means one per CPU (data.workers).",
        "chunk_mb": "MiB of input per unit of work; 0 means about 8 chunks per worker (data.chunk_mb).",
        "strict": "Stop at the first bad line, naming its file and line (data.strict).",
        "max_skipped_fraction": "Fail, writing no output, when more than this share of the lines or rows is "
        "skipped, blank lines aside (data.max_skipped_fraction, default 0.01; 1 accepts any).",
        "overwrite": "Replace an existing output, and drop the parts of an unfinished run.",
        "valid": "Tokenize the held-out part instead: data.valid_inputs -> data.valid_output (what a recipe's "
                 "[data] valid_datasets names as {data_valid_output}); --input/--output still win.",
        "parallel": "Spread the chunks over the tasks of a Slurm job on all its nodes, then merge.",
        "local": "Run here, in place, instead of submitting a job (the default on the local machine).",
        "submit": "Submit a Slurm job even on the local machine (e.g. to a workstation's own Slurm).",
        "tasks_per_node": "--parallel: Slurm tasks per node (data.parallel_tasks_per_node).",
        **SLURM_HELP,
        "dry": "Print what would be done (the plan, or the sbatch script); write and submit nothing.",
        "machine": MACHINE_HELP,
    },
)
def preprocess(c, input=None, tokenizer=None, output=None, text_key=None, backend=None, eod_token=None,
               workers=None, chunk_mb=None, strict=False, max_skipped_fraction=None, overwrite=False, valid=False,
               parallel=False, local=False, submit=False, tasks_per_node=None, nodes=None, time=None,
               partition=None, account=None, job_name=None, dependency=None, dry=False, machine=None):
    """Tokenize JSONL, Parquet or Arrow into a Megatron .bin/.idx pair (resumable; --parallel over Slurm)."""
    from titanenv.data.job import PreprocessRequest, preprocess as run_preprocess

    inputs = [part for value in (input or []) for part in value.split(":") if part]
    if valid:
        held_out = load({"machine": machine}).settings.data
        inputs = inputs or list(held_out.valid_inputs)
        output = output or held_out.valid_output
        if not inputs:
            from titanenv.errors import TitanEnvError

            raise TitanEnvError("--valid: data.valid_inputs is empty; set it or give --input")
    config = load({
        "machine": machine,
        "data.inputs": inputs or None,
        "data.tokenizer": tokenizer,
        "data.output": output,
        "data.text_key": text_key,
        "data.backend": backend,
        "data.eod_token": eod_token,
        "data.workers": as_int(workers),
        "data.chunk_mb": as_int(chunk_mb),
        "data.strict": True if strict else None,
        "data.max_skipped_fraction": as_float(max_skipped_fraction),
        "data.parallel_tasks_per_node": as_int(tasks_per_node),
        **slurm_flags(nodes, time, partition, account, job_name),
    })
    run_preprocess(config, PreprocessRequest(
        parallel=parallel, local=local, submit=submit, overwrite=overwrite, dry=dry, dependency=dependency,
    ))


@task(
    help={
        "prefix": OUTPUT_HELP + " Default: data.output.",
        "tokenizer": TOKENIZER_HELP + " Decodes documents; default: the one it was made with, else data.tokenizer.",
        "document": "Decode this document (0-based; negative counts from the end).",
        "chars": "Print at most this many characters of the document.",
        "machine": MACHINE_HELP,
    }
)
def inspect(c, prefix=None, tokenizer=None, document=0, chars=500, machine=None):
    """Print a dataset's documents, tokens, dtype and vocabulary bound, and decode one document."""
    from titanenv.data.inspect import describe

    config = load({"machine": machine, "data.output": prefix, "data.tokenizer": tokenizer})
    for line in describe(config, document=int(document), chars=int(chars), tokenizer_given=tokenizer is not None):
        print(line)


@task(help={"prefix": OUTPUT_HELP + " Default: data.output.", "machine": MACHINE_HELP})
def verify(c, prefix=None, machine=None):
    """Check a .bin/.idx pair for consistency (sizes, pointers, dtype); exit non-zero when corrupt."""
    from titanenv.data.inspect import verify as run_verify

    config = load({"machine": machine, "data.output": prefix})
    print(run_verify(config.expand_path(config.settings.data.output, "data.output")))


@task(
    help={
        "valid_fraction": "Share of the documents held out for validation, e.g. 0.05 (at least one, never all).",
        "prefix": OUTPUT_HELP + " The dataset to split; default: data.output.",
        "train_output": "Prefix of the training part (default: PREFIX-train).",
        "valid_output": "Prefix of the validation part (default: PREFIX-valid).",
        "seed": "Seed of the choice of held-out documents (same seed, same split).",
        "overwrite": "Replace existing outputs (the old ones stay until the new ones are complete).",
        "machine": MACHINE_HELP,
    }
)
def split(c, valid_fraction, prefix=None, train_output=None, valid_output=None, seed=1234, overwrite=False,
          machine=None):
    """Hold out whole documents of a dataset as a validation dataset: two new .bin/.idx pairs, nothing retokenized."""
    from titanenv.data.split import split as run_split
    from titanenv.errors import TitanEnvError

    config = load({"machine": machine, "data.output": prefix})
    source = config.expand_path(config.settings.data.output, "data.output")
    try:
        fraction, seed = float(valid_fraction), int(seed)
    except ValueError:
        raise TitanEnvError(f"--valid-fraction {valid_fraction!r} / --seed {seed!r}: expected numbers") from None
    train = config.expand_path(train_output, "--train-output") if train_output else source.with_name(f"{source.name}-train")
    valid = config.expand_path(valid_output, "--valid-output") if valid_output else source.with_name(f"{source.name}-valid")
    result = run_split(source, train, valid, fraction=fraction, seed=seed, overwrite=overwrite)
    print("\n".join(result.lines()))
    print(f"next: INVOKE_DATA_VALID_OUTPUT={valid} invoke train.run --dataset {train}  "
          "(a recipe's [data] valid_datasets = [\"{data_valid_output}\"] is then the held-out part)")


ns = Collection(preprocess, inspect, verify, split)
