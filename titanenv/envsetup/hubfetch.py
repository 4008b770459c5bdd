"""Download from the HuggingFace Hub into the caches; runs in the container with the venv's Python.

Started by :mod:`titanenv.envsetup.hub` as ``<venv>/bin/python -c BOOT <repo>
--model ID ... --dataset ID:CONFIG ...``: every name arrives as one argv word
and is checked again here. Only the standard library is imported at the top
(the names are also checked on the host, where the HF libraries may be
missing); ``huggingface_hub``, ``datasets`` and ``evaluate`` are imported
when an item needs them. The caches and online mode come from the
environment the host sets for this one process.

What each kind means:

- ``model ID[@REVISION]``: the repository's files (``huggingface_hub``
  ``snapshot_download``) except ``--ignore`` patterns (other frameworks'
  weights), PyTorch ``.bin``/``.pt``/``.pth`` weights where ``.safetensors``
  exist, and ``*.py`` (remote code) unless ``--trust-remote-code``;
- ``tokenizer ID[@REVISION]``: only the ``--tokenizer-file`` patterns;
- ``dataset ID[@REVISION][:CONFIG[:SPLIT]]``: ``datasets.load_dataset``,
  prepared as Arrow in ``HF_DATASETS_CACHE``; or a local file or directory
  (starting with ``/``), prepared the same way;
- ``metric NAME[@REVISION]``: ``evaluate.load``; a metric is code, so one
  outside evaluate's own namespaces needs ``--trust-remote-code``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from titanenv.envsetup.hubfetch import main; sys.exit(main(sys.argv[2:]))"
)

KINDS: tuple[str, ...] = ("model", "tokenizer", "dataset", "metric")
# Namespaces of evaluate's own metrics, comparisons and measurements ("accuracy" is evaluate-metric/accuracy).
OFFICIAL_METRIC_NAMESPACES = ("evaluate-metric", "evaluate-comparison", "evaluate-measurement")
# Where a dataset value is a local path rather than a Hub id.
LOCAL_PREFIXES = ("/", "./", "../", "~")
# Local files datasets prepares with one of its packaged builders, by suffix (compressed ones too).
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
                 ".txt": "text", ".arrow": "arrow"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_CONFIG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_SPLIT = re.compile(r"^\w+(?:\.\w+)*$", re.ASCII)

_FORMS = {
    "model": "ID[@REVISION]",
    "tokenizer": "ID[@REVISION]",
    "dataset": "ID[@REVISION][:CONFIG[:SPLIT]] or a local path starting with / ./ ../ or ~",
    "metric": "NAME[@REVISION]",
}


@dataclass(frozen=True)
class Item:
    """One thing to download, as the user named it."""

    kind: str
    text: str
    repo_id: str = ""
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    # A local dataset: an absolute path.
    path: str | None = None

    @property
    def metric_repo(self) -> str:
        return self.repo_id if "/" in self.repo_id else f"evaluate-metric/{self.repo_id}"

    @property
    def community_metric(self) -> bool:
        return self.kind == "metric" and self.metric_repo.split("/")[0] not in OFFICIAL_METRIC_NAMESPACES


def _repo_id_problem(text: str) -> str | None:
    if not text:
        return "the name is empty"
    if len(text) > 96 or not _REPO_ID.match(text) or "--" in text or ".." in text:
        return ("not a Hub id (letters, digits, - _ . , at most 96 characters, one / between namespace and name, "
                "no -- or ..)")
    return None


def parse(kind: str, text: str, *, base: str | None = None) -> Item:
    """``text`` as an :class:`Item` of ``kind``; ValueError (one line, without the option) when it is no such name.

    A local dataset path is made absolute against ``base`` (default: the working directory).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if any(ch in text for ch in "\x00\n\r"):
        raise ValueError(f"{text!r} holds a control character")
    if kind == "dataset" and text.startswith(LOCAL_PREFIXES):
        path = os.path.expanduser(text)
        path = os.path.normpath(os.path.join(base or os.getcwd(), path))
        return Item(kind, text, path=path)
    head, *rest = text.split(":")
    if rest and kind != "dataset":
        raise ValueError(f"{text!r}: a {kind} takes no config (expected {_FORMS[kind]})")
    if len(rest) > 2:
        raise ValueError(f"{text!r}: too many ':' (expected {_FORMS[kind]})")
    repo_id, at, revision = head.partition("@")
    problem = _repo_id_problem(repo_id)
    if problem:
        raise ValueError(f"{text!r}: {problem} (expected {_FORMS[kind]})")
    if at and (not _REVISION.match(revision) or ".." in revision):
        raise ValueError(f"{text!r}: {revision!r} is not a revision (a branch, tag or commit)")
    config = rest[0] if rest else None
    split = rest[1] if len(rest) > 1 else None
    if config is not None and not _CONFIG.match(config):
        raise ValueError(f"{text!r}: {config!r} is not a config name (letters, digits, _ . + -)")
    if split is not None and not _SPLIT.match(split):
        raise ValueError(f"{text!r}: {split!r} is not a split name (such as train or validation)")
    return Item(kind, text, repo_id=repo_id, revision=revision or None, config=config, split=split)


def trust_problem(item: Item, trust_remote_code: bool) -> str | None:
    """Why ``item`` cannot be fetched without remote code, or None."""
    if item.community_metric and not trust_remote_code:
        return (f"{item.text!r} is a community metric ({item.metric_repo}): loading it runs its code; "
                "pass --trust-remote-code to allow that")
    return None


def local_format(path: str) -> str | None:
    """The packaged ``datasets`` builder of a local file (json, csv, ...), or None for a directory."""
    if os.path.isdir(path):
        return None
    name = path.lower()
    for compression in COMPRESSIONS:
        name = name.removesuffix(compression)
    return LOCAL_FORMATS.get(os.path.splitext(name)[1], "")


def model_ignore_patterns(files: list[str], ignore: list[str], trust_remote_code: bool) -> list[str]:
    """What a model download leaves out, given the repository's ``files``."""
    patterns = list(ignore)
    if any(f.endswith(".safetensors") for f in files):
        # The same weights twice: transformers loads the safetensors.
        patterns += ["*.bin", "*.pt", "*.pth"]
    if not trust_remote_code:
        patterns.append("*.py")
    return patterns


def say(message: str) -> None:
    print(f"env.hub-download: {message}", flush=True)


def complain(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    """One line from an exception of the HF libraries or the network."""
    name = type(exc).__name__
    text = " ".join(str(exc).split()) or name
    if isinstance(exc, ModuleNotFoundError):
        return text
    module = type(exc).__module__ or ""
    if module.startswith(("httpx", "requests", "urllib3")) or isinstance(exc, (ConnectionError, TimeoutError)):
        from huggingface_hub import constants

        return f"cannot reach the Hub at {constants.ENDPOINT} ({name}: {text})"
    return f"{name}: {text[:300]}"


def _snapshot(item: Item, *, allow: list[str] | None, ignore_for: Callable[[list[str]], list[str]] | None) -> str:
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().repo_info(item.repo_id, repo_type="model", revision=item.revision)
    files = [s.rfilename for s in info.siblings or []]
    ignore = ignore_for(files) if ignore_for else None
    # The named revision (default: main), not the commit: the cache then records
    # refs/<revision>, which offline loads without a revision look up.
    path = snapshot_download(item.repo_id, revision=item.revision, allow_patterns=allow, ignore_patterns=ignore)
    commit = os.path.basename(path)
    count = sum(len(names) for _, _, names in os.walk(path))
    return f"{item.kind} {item.text}: {item.revision or 'main'} = commit {commit}; {count} files in {path}"


def fetch_model(item: Item, args: argparse.Namespace) -> str:
    return _snapshot(item, allow=None,
                     ignore_for=lambda files: model_ignore_patterns(files, args.ignore, args.trust_remote_code))


def fetch_tokenizer(item: Item, args: argparse.Namespace) -> str:
    allow = list(args.tokenizer_file) + (["*.py"] if args.trust_remote_code else [])
    return _snapshot(item, allow=allow, ignore_for=None)


def _splits(loaded) -> tuple[str, str]:
    """``train 122 rows, test 9 rows`` and the cache directory of a loaded dataset (a DatasetDict or one split)."""
    parts = loaded.items() if hasattr(loaded, "items") else [(str(loaded.split), loaded)]
    where = ""
    words = []
    for name, split in parts:
        words.append(f"{name} {split.num_rows} rows")
        if split.cache_files and not where:
            where = os.path.dirname(split.cache_files[0]["filename"])
    return ", ".join(words), where


def fetch_dataset(item: Item, args: argparse.Namespace) -> str:
    import datasets

    if item.path is not None:
        if not os.path.exists(item.path):
            raise FileNotFoundError(f"no such file or directory: {item.path}")
        builder = local_format(item.path)
        if builder == "":
            raise ValueError(f"{item.path}: unknown file type (known: {', '.join(sorted(LOCAL_FORMATS))}, "
                             f"also {', '.join(COMPRESSIONS)}-compressed, or a directory)")
        loaded = datasets.load_dataset(builder, data_files=item.path) if builder else datasets.load_dataset(item.path)
        rows, where = _splits(loaded)
        how = f"load_dataset({builder!r}, data_files={item.path!r})" if builder else f"load_dataset({item.path!r})"
        return f"dataset {item.path} (local): {rows} in {where}; jobs read it with {how}"
    from huggingface_hub import HfApi

    info = HfApi().dataset_info(item.repo_id, revision=item.revision)
    loaded = datasets.load_dataset(item.repo_id, item.config, split=item.split, revision=item.revision)
    rows, where = _splits(loaded)
    return f"dataset {item.text}: {item.revision or 'main'} = commit {info.sha}; {rows} in {where}"


def fetch_metric(item: Item, args: argparse.Namespace) -> str:
    import inspect

    try:
        import evaluate
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the venv has no `evaluate` package; add evaluate to env.pip_packages and run "
                                  "invoke env.setup") from None
    # The name as given: jobs load it by that name, offline, from the same cache.
    module = evaluate.load(item.repo_id, revision=item.revision)
    return f"metric {item.text}: {item.metric_repo}; module in {os.path.dirname(inspect.getfile(type(module)))}"


FETCH: dict[str, Callable[[Item, argparse.Namespace], str]] = {
    "model": fetch_model, "tokenizer": fetch_tokenizer, "dataset": fetch_dataset, "metric": fetch_metric,
}


def report_environment(items: list[Item], trust_remote_code: bool) -> bool:
    """Say what the libraries themselves see: online or not, which caches; False when offline mode is on."""
    from huggingface_hub import constants

    seen = [f"huggingface_hub offline={constants.HF_HUB_OFFLINE} cache={constants.HF_HUB_CACHE}"]
    offline = constants.HF_HUB_OFFLINE
    if any(item.kind == "dataset" for item in items):
        import datasets

        seen.append(f"datasets offline={datasets.config.HF_HUB_OFFLINE} cache={datasets.config.HF_DATASETS_CACHE}")
        offline = offline or datasets.config.HF_HUB_OFFLINE
    say("; ".join(seen) + f"; trust_remote_code={'on' if trust_remote_code else 'off'}")
    if offline:
        complain("offline mode is on in this step (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); nothing was downloaded")
    return not offline


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="env.hub-download")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--ignore", action="append", default=[], help="glob a model download leaves out")
    parser.add_argument("--tokenizer-file", action="append", default=[], help="glob a tokenizer download takes")
    for kind in KINDS:
        parser.add_argument(f"--{kind}", action="append", default=[], dest=kind)
    args = parser.parse_args(argv)
    items = []
    for kind in KINDS:
        for text in getattr(args, kind):
            try:
                item = parse(kind, text)
            except ValueError as exc:
                complain(f"--{kind} {exc}")
                return 2
            problem = trust_problem(item, args.trust_remote_code)
            if problem:
                complain(f"--{kind} {problem}")
                return 2
            items.append(item)
    try:
        online = report_environment(items, args.trust_remote_code)
    except ModuleNotFoundError as exc:
        complain(f"the venv's Python ({sys.executable}) has no {exc.name} (datasets brings huggingface_hub); "
                 "run invoke env.setup")
        return 1
    if not online:
        return 1
    failed = 0
    for item in items:
        try:
            say(FETCH[item.kind](item, args))
        except Exception as exc:  # one line per failed item; the others still run
            failed += 1
            complain(f"--{item.kind} {item.text}: {_reason(exc)}")
    if failed:
        complain(f"{failed} of {len(items)} downloads failed; the rest are in the caches")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
