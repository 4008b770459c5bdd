"""research.export on a machine: in place here, or as a Slurm job through the one submission path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from titanenv.config import Config
from titanenv.errors import TitanEnvError
from titanenv.research.experiment import find_experiment
from titanenv.files import write_text_atomic


@dataclass(frozen=True)
class ExportOptions:
    toml: str | None = None  # --config
    step: int | None = None
    output: str | None = None
    dtype: str | None = None
    overwrite: bool = False
    local: bool = False
    submit: bool = False
    dry: bool = False
    dependency: str | None = None


def in_place(config: Config, options: ExportOptions) -> bool:
    if options.local and options.submit:
        raise TitanEnvError("--local and --submit contradict each other; give one")
    return options.local or (config.settings.cluster.local and not options.submit)


def export(config: Config, options: ExportOptions, echo: Callable[[str], None] = print):
    """Export the experiment's checkpoint here, or submit a job that does (large models, other machines)."""
    from titanenv.research.export import ExportRequest, default_dtype, dtype_name, export as run_export

    experiment = find_experiment(config, options.toml)
    dtype = dtype_name(options.dtype) if options.dtype else default_dtype(experiment.job, config.settings.research.dtype)
    output = config.expand_path(options.output, "--output") if options.output else None
    request = ExportRequest(checkpoint_folder=experiment.checkpoint_folder, step=options.step, job=experiment.job,
                            output=output, dtype=dtype, overwrite=options.overwrite)
    if not in_place(config, options):
        return _submit(config, request, options, echo)
    if options.dry:
        from titanenv.research.experiment import find_checkpoint
        from titanenv.research.export import default_output

        step, checkpoint = find_checkpoint(request.checkpoint_folder, request.step)
        echo(f"# dry run: would export {checkpoint} ({dtype}, model from {experiment.job.path}) to "
             f"{output or default_output(request.checkpoint_folder, step)}; nothing written")
        return None
    return run_export(request, echo=echo)


def _submit(config: Config, request, options: ExportOptions, echo: Callable[[str], None]):
    from titanenv import sbatch, slurm
    from titanenv.launch import job_python
    from titanenv.runs import new_run

    run = new_run(config, "export")
    # Beside the run directory (submission creates the directory itself): the
    # TOML the job builds the model from, placeholders already filled.
    toml = run.path.with_name(f"{run.path.name}.export.toml")
    command = [job_python(config), "-m", "titanenv.research", "export",
               "--checkpoint-folder", str(request.checkpoint_folder), "--toml", str(toml), "--dtype", request.dtype]
    if request.step is not None:
        command += ["--step", str(request.step)]
    if request.output is not None:
        command += ["--output", str(request.output)]
    if request.overwrite:
        command.append("--overwrite")
    script = sbatch.export_script(config, run_dir=run.path, command=command)
    if options.dry:
        echo(f"# {toml}: the model of {request.job.path}")
    else:
        toml.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(toml, request.job.to_toml())
    try:
        return slurm.submit(config, run, script, dry=options.dry, dependency=options.dependency, echo=echo,
                            extra={"export": {"checkpoint_folder": str(request.checkpoint_folder),
                                              "step": request.step, "dtype": request.dtype,
                                              "output": str(request.output) if request.output else None}})
    except BaseException:
        if not options.dry:
            toml.unlink(missing_ok=True)
        raise
