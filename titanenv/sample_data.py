"""The sample corpus and tokenizers shipped in ``sample_data/``, as plain files for tests and benchmarks.

The product reads ``sample_data/`` as it is (compressed corpus, tokenizer
directory); :func:`materialize` writes the plain layout that tests and
benchmarks use (``corpus/*.jsonl``, ``tokenizers/<name>/...``), checked
against ``sample_data/SHA256SUMS``, once per target directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from titanenv.files import replacing, sha256_file

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
# Plain file -> the shipped files it is made of, concatenated (decompressed where .zst).
_LAYOUT = {
    "corpus/openwebtext_1000.jsonl": ["corpus/openwebtext/train.jsonl.zst", "corpus/openwebtext/valid.jsonl.zst"],
    "corpus/wikitext2_valid_test.jsonl": ["corpus/wikitext2_valid_test.jsonl.zst"],
    "tokenizers/gpt2/tokenizer.json": ["tokenizers/gpt2/tokenizer.json"],
    "tokenizers/gpt2/vocab.json": ["tokenizers/gpt2/vocab.json.zst"],
    "tokenizers/gpt2/merges.txt": ["tokenizers/gpt2/merges.txt.zst"],
    "tokenizers/gpt-neox-20b-pii-dolma/tokenizer.json": ["tokenizers/gpt-neox-20b-pii-dolma/tokenizer.json.zst"],
}


class SampleDataError(RuntimeError):
    """A shipped sample file is missing or does not match its checksum."""


def _checksums() -> dict[str, str]:
    lines = (SAMPLE_DIR / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split(None, 1) for line in lines if line.strip())}


def _write(target: Path, parts: list[str], expected: str) -> None:
    import zstandard

    with replacing(target) as temporary:
        with temporary.open("wb") as out:
            for part in parts:
                source = SAMPLE_DIR / part
                with source.open("rb") as f:
                    if part.endswith(".zst"):
                        zstandard.ZstdDecompressor().copy_stream(f, out)
                    else:
                        shutil.copyfileobj(f, out)
        if sha256_file(temporary) != expected:
            raise SampleDataError(f"{SAMPLE_DIR}: {target.name} made from {parts} does not match SHA256SUMS")


def materialize(target: Path) -> Path:
    """Plain copies of the sample files under ``target`` (made once, checked); returns ``target``."""
    sums = _checksums()
    for name, parts in _LAYOUT.items():
        path = target / name
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, parts, sums[name])
    for source in [*SAMPLE_DIR.glob("corpus/**/SOURCE*.txt"), *SAMPLE_DIR.glob("tokenizers/*/SOURCE.txt")]:
        copy = target / source.relative_to(SAMPLE_DIR)
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
    return target
