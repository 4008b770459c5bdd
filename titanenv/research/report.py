"""A run report: what an experiment's training did, as a table and a PNG of its curves.

Where the numbers come from (TorchTitan 0.3.0), each process start of a
training being one *link* of the experiment's chain:

- **TensorBoard events** (``metrics.enable_tensorboard``):
  ``<dump folder>/tb/<start minute>/events.out.tfevents.*``, one file per
  link, with ``loss_metrics/global_avg_loss``, ``throughput(tps)``,
  ``mfu(%)`` per logged step and ``validation_metrics/loss`` when a
  validator runs. Exact values; used first.
- **Job logs** of the experiment's training runs (``train.submit``): the
  ``step: N  loss: X ... tps: T ... mfu: M%`` lines TorchTitan prints, and
  ``validate step: N  loss: X`` lines; one file per Slurm job.
- **Structured logs** (``debug.enable_structured_logging``, on by default):
  ``<dump folder>/structured_logs/training.global_rank_0.*.jsonl``, with each
  step's start and end and its token count: wall time, and tokens/s where
  nothing else gives it. They carry no loss.

Links are stitched into one curve by step; where links overlap (a link that
died after its last checkpoint is redone by the next), the later link's
values win, as they are the history the checkpoints continue.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from titanenv.research.experiment import ResearchError
from titanenv.files import replacing

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NUMBER = r"(-?[0-9][0-9,]*\.?[0-9]*(?:e[-+]?\d+)?|nan|inf)"
_TRAIN_LINE = re.compile(r"(?<!validate )step:\s*(\d+)\s+loss:\s*" + _NUMBER + r"(.*)$")
_VALIDATE_LINE = re.compile(r"validate step:\s*(\d+)\s+loss:\s*" + _NUMBER)
_TPS = re.compile(r"tps:\s*" + _NUMBER)
_MFU = re.compile(r"mfu:\s*" + _NUMBER + "%")
_STAMP = re.compile(r"\[titan\]\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")

TB_TAGS = {
    "loss_metrics/global_avg_loss": "loss",
    "throughput(tps)": "tps",
    "mfu(%)": "mfu",
    "validation_metrics/loss": "validation_loss",
}
METRICS = ("loss", "tps", "mfu", "validation_loss")


def _float(text: str) -> float:
    return float(text.replace(",", ""))


@dataclass
class Link:
    """One process start of the training, as one source saw it."""

    source: str  # "tensorboard", "log" or "structured"
    path: Path
    start: float  # seconds since the epoch: orders links
    values: dict[str, dict[int, float]] = field(default_factory=lambda: {m: {} for m in METRICS})
    wall_seconds: float | None = None

    @property
    def steps(self) -> list[int]:
        return sorted(set().union(*(set(v) for v in self.values.values())))


# --- parsing ------------------------------------------------------------------------


def parse_log(text: str, path: Path = Path("-"), start: float = 0.0) -> Link:
    """TorchTitan's ``step:`` and ``validate step:`` lines of one job's log."""
    link = Link("log", path, start)
    stamps = []
    for raw in text.splitlines():
        line = _ANSI.sub("", raw)
        stamp = _STAMP.search(line)
        validate = _VALIDATE_LINE.search(line)
        train = None if validate else _TRAIN_LINE.search(line)
        if not (validate or train):
            continue
        if stamp:
            stamps.append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                          + int(stamp.group(2)) / 1000)
        if validate:
            link.values["validation_loss"][int(validate.group(1))] = _float(validate.group(2))
            continue
        step = int(train.group(1))
        link.values["loss"][step] = _float(train.group(2))
        rest = train.group(3)
        if tps := _TPS.search(rest):
            link.values["tps"][step] = _float(tps.group(1))
        if mfu := _MFU.search(rest):
            link.values["mfu"][step] = _float(mfu.group(1))
    if stamps:
        link.start = link.start or stamps[0]
        link.wall_seconds = stamps[-1] - stamps[0] if len(stamps) > 1 else None
    return link


def parse_tensorboard(path: Path) -> Link:
    """The scalars TorchTitan's TensorBoard logger wrote into one events file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    link = Link("tensorboard", path, 0.0)
    times = []
    try:
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                metric = TB_TAGS.get(value.tag)
                if metric is None:
                    continue
                number = value.simple_value if value.HasField("simple_value") else _tensor_value(value)
                link.values[metric][int(event.step)] = float(number)
                times.append(event.wall_time)
    except Exception as exc:  # a truncated or foreign file: the report names it
        raise ResearchError(f"{path}: cannot read TensorBoard events: {exc}") from None
    link.start = min(times) if times else path.stat().st_mtime
    return link


def _tensor_value(value: Any) -> float:
    from tensorboard.util import tensor_util

    return float(tensor_util.make_ndarray(value.tensor))


def parse_structured(path: Path) -> Link:
    """Step times and token counts of one rank-0 structured log of TorchTitan."""
    link = Link("structured", path, 0.0)
    starts: dict[int, float] = {}
    ends: dict[int, tuple[float, float]] = {}  # step -> (end time, duration ms)
    tokens: dict[int, float] = {}
    first = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed job
        name, step, when = record.get("log_type_name"), record.get("step"), record.get("time_us")
        if first is None and when is not None:
            first = when / 1e6
        if step is None or when is None:
            continue
        if name == "step_start":
            starts[int(step)] = when / 1e6
        elif name == "step_end" and record.get("value") is not None:
            ends[int(step)] = (when / 1e6, float(record["value"]))
        elif name == "metric_value" and record.get("event_name") == "global_valid_tokens":
            tokens[int(step)] = float(record.get("value") or 0)
    link.start = first or 0.0
    for step, (_, milliseconds) in ends.items():
        if step in tokens and milliseconds > 0:
            link.values["tps"][step] = tokens[step] / (milliseconds / 1000)
    if ends and starts:
        link.wall_seconds = max(end for end, _ in ends.values()) - min(starts.values())
    return link


# --- gathering --------------------------------------------------------------------------


@dataclass
class Report:
    name: str
    dump_folder: Path
    links: list[Link]
    series: dict[str, dict[int, float]]  # stitched, by metric
    sources: dict[str, str]  # metric -> source used
    wall_seconds: float | None
    checkpoints: list[int]
    link_starts: list[int]  # first step of each link after the first (chain boundaries)

    def summary(self) -> dict[str, Any]:
        loss = self.series["loss"]
        validation = self.series["validation_loss"]
        steps = sorted(set(loss) | set(self.series["tps"]))
        out: dict[str, Any] = {
            "name": self.name, "dump_folder": str(self.dump_folder),
            "links": len(self.link_starts) + 1 if self.links else 0,
            "first_step": steps[0] if steps else None, "last_step": steps[-1] if steps else None,
            "logged_steps": len(steps), "checkpoints": self.checkpoints, "wall_seconds": self.wall_seconds,
            "sources": self.sources, "chain_starts": self.link_starts,
        }
        if loss:
            first, last = min(loss), max(loss)
            best = min(loss, key=lambda s: (loss[s], s))
            out.update(loss_first=[first, loss[first]], loss_last=[last, loss[last]], loss_best=[best, loss[best]])
        if validation:
            last = max(validation)
            best = min(validation, key=lambda s: (validation[s], s))
            out.update(validation_last=[last, validation[last]], validation_best=[best, validation[best]])
        for metric in ("tps", "mfu"):
            values = self.series[metric]
            # The first step of each link compiles and warms up: left out of the median.
            steady = [v for s, v in values.items() if s not in self.link_starts and s != min(values)] or list(values.values())
            if values:
                out[f"{metric}_median"] = statistics.median(steady)
                out[f"{metric}_last"] = values[max(values)]
        return out


def stitch(links: list[Link], metric: str) -> dict[int, float]:
    """One curve from links in start order; a later link's value of a step replaces an earlier one's."""
    merged: dict[int, float] = {}
    for link in sorted(links, key=lambda link: link.start):
        merged.update(link.values[metric])
    return dict(sorted(merged.items()))


def gather(config, experiment) -> Report:
    """Every link of the experiment's training, from all three sources, stitched per metric."""
    from titanenv.research.experiment import checkpoint_steps, training_runs

    dump = experiment.dump_folder
    tb_folder = str(experiment.job.get("metrics.save_tb_folder", "tb") or "tb")
    links: list[Link] = [parse_tensorboard(p) for p in sorted((dump / tb_folder).glob("*/**/events.out.tfevents.*"))]
    links += [parse_structured(p) for p in sorted((dump / "structured_logs").glob("training.global_rank_0.*.jsonl"))]
    for record in training_runs(config, dump):
        submitted = _epoch(record.submitted)
        for order, job_id in enumerate(record.job_ids):
            text = "".join(p.read_text(encoding="utf-8", errors="replace")
                           for p in sorted(record.run_dir.glob(f"*-{job_id}.*")) if p.suffix in (".out", ".err"))
            if text:
                # Links of a chain share a submission time: their order in the record orders them.
                links.append(parse_log(text, record.run_dir / f"*-{job_id}.out", submitted + order * 1e-3))
    if not any(link.steps for link in links):
        raise ResearchError(
            f"{dump}: no training metrics here (no TensorBoard events, structured logs or job logs of "
            f"training runs named {experiment.name!r}); train with this name first, or give --name")
    series: dict[str, dict[int, float]] = {}
    sources: dict[str, str] = {}
    for metric in METRICS:
        for source in ("tensorboard", "log", "structured"):
            chosen = [link for link in links if link.source == source and link.values[metric]]
            if chosen:
                series[metric], sources[metric] = stitch(chosen, metric), source
                break
        else:
            series[metric] = {}
    # Wall time: the structured logs time every link; else the job logs' time stamps.
    wall = None
    for source in ("structured", "log"):
        times = [link.wall_seconds for link in links if link.source == source and link.wall_seconds]
        if times:
            wall = sum(times)
            break
    primary = sources.get("loss") or sources.get("tps")
    ordered = sorted((link for link in links if link.source == primary and link.steps), key=lambda link: link.start)
    boundaries = [link.steps[0] for link in ordered[1:]]
    return Report(experiment.name, dump, links, series, sources, wall,
                  checkpoint_steps(experiment.checkpoint_folder), boundaries)


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0


# --- output ----------------------------------------------------------------------------


def table(report: Report, figure: Path | None = None) -> list[str]:
    s = report.summary()

    def value(pair: list | None, digits: int = 4) -> str:
        return "-" if not pair else f"{pair[1]:.{digits}f} (step {pair[0]})"

    def rate(metric: str, unit: str = "", digits: int = 0) -> str:
        if f"{metric}_median" not in s:
            return "-"
        return f"median {s[metric + '_median']:,.{digits}f}{unit}, last {s[metric + '_last']:,.{digits}f}{unit}"

    rows = [
        ("experiment", f"{report.name} ({report.dump_folder})"),
        ("links", f"{s['links']} ({', '.join(f'{k} from {v}' for k, v in s['sources'].items())})"),
        ("steps", "-" if s["first_step"] is None else f"{s['first_step']} to {s['last_step']} ({s['logged_steps']} logged)"),
        ("train loss first", value(s.get("loss_first"))),
        ("train loss last", value(s.get("loss_last"))),
        ("train loss best", value(s.get("loss_best"))),
        ("validation loss last", value(s.get("validation_last"))),
        ("validation loss best", value(s.get("validation_best"))),
        ("tokens/s per device", rate("tps")),
        ("MFU", rate("mfu", "%", 2)),
        ("wall time", "-" if s["wall_seconds"] is None else _duration(s["wall_seconds"])),
        ("checkpoints", ", ".join(f"step-{n}" for n in s["checkpoints"]) or "-"),
    ]
    if s["chain_starts"]:
        rows.insert(3, ("chain links start at", ", ".join(f"step {n}" for n in s["chain_starts"])))
    if figure is not None:
        rows.append(("figure", str(figure)))
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {text}" for name, text in rows]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def plot(report: Report, path: Path) -> Path:
    """Loss (training, validation) and tokens/s against step, chain links marked; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axes, tps_axes) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    train = report.series["loss"]
    validation = report.series["validation_loss"]
    if train:
        loss_axes.plot(list(train), list(train.values()), label="training loss", color="tab:blue")
    if validation:
        loss_axes.plot(list(validation), list(validation.values()), "o-", label="validation loss", color="tab:orange")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title(f"{report.name}: {len(train)} logged steps")
    if train or validation:
        loss_axes.legend()
    tps = report.series["tps"]
    if tps:
        tps_axes.plot(list(tps), list(tps.values()), color="tab:green")
    tps_axes.set_ylabel("tokens/s per device")
    tps_axes.set_xlabel("step")
    tps_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    for step in report.link_starts:
        for axes in (loss_axes, tps_axes):
            axes.axvline(step, color="grey", linestyle="--", linewidth=0.8)
    for axes in (loss_axes, tps_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    finally:
        plt.close(figure)
    return path


def default_figure(config, experiment) -> Path:
    """``report.png`` in the newest training run's directory of the experiment, else its dump folder."""
    from titanenv.research.experiment import training_runs

    runs = training_runs(config, experiment.dump_folder)
    return (runs[0].run_dir if runs else experiment.dump_folder) / "report.png"


def write_summary(report: Report, path: Path) -> Path:
    from titanenv.runs import write_json_atomic

    data = report.summary()
    data["series"] = {metric: {str(k): v for k, v in values.items() if math.isfinite(v)}
                      for metric, values in report.series.items()}
    write_json_atomic(path, data)
    return path


def run_report(config, experiment, figure: Path | None = None) -> tuple[list[str], Path]:
    report = gather(config, experiment)
    figure = figure or default_figure(config, experiment)
    plot(report, figure)
    write_summary(report, figure.with_suffix(".json"))
    return table(report, figure), figure
