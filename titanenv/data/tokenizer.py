"""Text tokenizers for preprocessing: gigatoken when it loads the tokenizer, HF ``tokenizers`` otherwise.

Both backends give identical ids (tested on the whole shared corpus); HF
``tokenizers`` is the reference and the fallback for anything gigatoken
cannot load. A tokenizer is found from a path:

- a ``tokenizer.json`` file, or a directory holding one;
- a directory with GPT-2 style ``vocab.json`` + ``merges.txt`` (byte-level BPE,
  as Megatron-LM's ``GPT2BPETokenizer`` reads them);
- a SentencePiece ``.model`` file (gigatoken only).

Ids are the tokenizer's own, with no special tokens added (Megatron-LM's
``tokenize`` for GPT-2 and GPT-NeoX style tokenizers); the end-of-document
token is appended by the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from titanenv.errors import TitanEnvError

BACKENDS = ("auto", "gigatoken", "hf")
# End-of-document candidates, in order, when neither the option nor a
# tokenizer_config.json names one.
_EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")


class TokenizerError(TitanEnvError):
    """A tokenizer cannot be found, read or used."""


@dataclass(frozen=True)
class TokenizerFiles:
    """The files a tokenizer is read from."""

    path: Path  # what the user named
    kind: str  # "tokenizer.json", "vocab+merges" or "sentencepiece"
    files: tuple[Path, ...]
    config: Path | None  # tokenizer_config.json beside it, if any

    def fingerprint(self) -> str:
        """sha256 over the tokenizer's files: a resumed run must use the same tokenizer."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()


def find_tokenizer(path: Path | str) -> TokenizerFiles:
    """Which files make the tokenizer at ``path``; one-line error naming it if none do."""
    path = Path(path)
    if path.is_file():
        config = path.parent / "tokenizer_config.json"
        if path.suffix == ".model":
            return TokenizerFiles(path, "sentencepiece", (path,), config if config.is_file() else None)
        return TokenizerFiles(path, "tokenizer.json", (path,), config if config.is_file() else None)
    if not path.exists():
        raise TokenizerError(f"tokenizer {path}: no such file or directory")
    if not path.is_dir():
        raise TokenizerError(f"tokenizer {path}: not a file or directory")
    config = path / "tokenizer_config.json"
    config_or_none = config if config.is_file() else None
    if (path / "tokenizer.json").is_file():
        return TokenizerFiles(path, "tokenizer.json", (path / "tokenizer.json",), config_or_none)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return TokenizerFiles(path, "vocab+merges", (path / "vocab.json", path / "merges.txt"), config_or_none)
    models = sorted(path.glob("*.model"))
    if len(models) == 1:
        return TokenizerFiles(path, "sentencepiece", (models[0],), config_or_none)
    raise TokenizerError(
        f"tokenizer {path}: holds no tokenizer.json, vocab.json + merges.txt, or SentencePiece .model"
    )


@dataclass
class TextTokenizer:
    """A loaded tokenizer: ``encode`` turns texts into one flat id array plus offsets."""

    files: TokenizerFiles
    backend: str  # "gigatoken" or "hf"
    vocab_size: int
    eod_id: int
    eod_token: str
    _impl: Any = field(repr=False)
    _scratch: tuple[int, int] | None = field(default=None, repr=False, compare=False)  # (pid, memfd)

    def encode(self, texts: list[str], parallel: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids of every text back to back (uint32) and offsets (int64, ``len(texts) + 1``).

        ``parallel``: let gigatoken use its thread pool (None: its own choice;
        forked worker processes are detected and encode on their own thread).
        """
        if self.backend == "gigatoken":
            layout = self._impl.encode_batch(texts, parallel=parallel).layout
            offsets = np.asarray(layout.offsets.data, dtype=np.int64)
            ids = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
            return ids, offsets - offsets[0]
        encodings = self._impl.encode_batch_fast(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(
            (i for e in encodings for i in e.ids), dtype=np.uint32, count=int(offsets[-1])
        )
        return ids, offsets

    def encode_arrow(self, texts: Any, parallel: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``encode`` for a pyarrow string array of documents (no nulls, no empty texts).

        gigatoken reads the array's own buffers, handed over as an awkward
        string array (int64 offsets): no Python string per document, three
        times faster than ``to_pylist`` here (bench/preprocess_parquet.py).
        HF ``tokenizers`` needs Python strings.
        """
        if self.backend != "gigatoken":
            return self.encode(texts.to_pylist())
        import awkward

        from titanenv.data.tables import string_buffers

        if not len(texts):
            return np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64)
        offsets, data = string_buffers(texts)
        strings = awkward.contents.ListOffsetArray(
            awkward.index.Index64(offsets),
            awkward.contents.NumpyArray(data, parameters={"__array__": "char"}),
            parameters={"__array__": "string"},
        )
        layout = self._impl.encode_batch(awkward.Array(strings), parallel=parallel).layout
        offsets = np.asarray(layout.offsets.data, dtype=np.int64)
        ids = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        return ids, offsets - offsets[0]

    def encode_jsonl(self, data: bytes, text_key: str, lines: int | None = None,
                     parallel: bool | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Parse and encode JSON lines in one pass inside gigatoken; None where that cannot be trusted.

        gigatoken's JSONL reader is several times faster than parsing in
        Python, but it stops quietly at the first line it cannot use and keeps
        empty texts. So its answer is taken only when it has one non-empty
        document per line; otherwise (None) the caller parses the lines itself
        and reports each bad one. Linux only (an in-memory file holds the bytes).
        ``lines``: the number of lines in ``data``, where the caller counted them;
        ``parallel``: gigatoken's (None: threads except in a forked worker).
        """
        if self.backend != "gigatoken" or not hasattr(os, "memfd_create") or not data:
            return None
        import gigatoken

        descriptor = self._scratch_file()
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(descriptor, view[written:], written)
        os.ftruncate(descriptor, len(view))
        source = gigatoken.JsonlFileSource([f"/proc/self/fd/{descriptor}"], field=text_key)
        layout = self._impl.encode_files(source, parallel=parallel).layout
        offsets = np.asarray(layout.offsets.data, dtype=np.int64)
        if lines is None:
            lines = bytes(data).count(b"\n") + (0 if bytes(data[-1:]) == b"\n" else 1)
        if len(offsets) - 1 != lines or (np.diff(offsets) == 0).any():
            return None
        ids = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        return ids, offsets - offsets[0]

    def _scratch_file(self) -> int:
        """This process's in-memory file for encode_jsonl, reused: its pages stay allocated between slices."""
        pid = os.getpid()
        if self._scratch is None or self._scratch[0] != pid:  # a forked worker makes its own
            self._scratch = (pid, os.memfd_create("titanenv-jsonl", os.MFD_CLOEXEC))
        return self._scratch[1]

    def token_id(self, token: str) -> int | None:
        """The id of ``token`` in the vocabulary (added tokens included), or None."""
        if self.backend == "gigatoken":
            return _gigatoken_lookup(self._impl)(token)
        return self._impl.token_to_id(token)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        ids = np.asarray(ids, dtype=np.uint32)
        if self.backend == "gigatoken":
            return self._impl.decode(ids).decode("utf-8", errors="replace")
        return self._impl.decode(ids.tolist(), skip_special_tokens=False)


def _hf_tokenizer(files: TokenizerFiles) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    try:
        if files.kind == "tokenizer.json":
            return Tokenizer.from_file(str(files.files[0]))
        if files.kind == "vocab+merges":
            # GPT-2's byte-level BPE exactly as its vocab.json + merges.txt define it.
            vocab, merges = (str(p) for p in files.files)
            tokenizer = Tokenizer(models.BPE.from_file(vocab, merges))
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            return tokenizer
    except Exception as exc:  # tokenizers raises plain Exception for unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(f"tokenizer {files.path}: cannot read it: {first}") from None
    raise TokenizerError(f"tokenizer {files.path}: a SentencePiece model needs the gigatoken backend")


def _gigatoken_tokenizer(files: TokenizerFiles, hf: Any | None) -> Any:
    import gigatoken

    if files.kind == "sentencepiece":
        return gigatoken.Tokenizer.from_sentencepiece(files.files[0])
    if files.kind == "vocab+merges":
        return gigatoken.Tokenizer(hf if hf is not None else _hf_tokenizer(files))
    return gigatoken.Tokenizer(files.files[0])


def _configured_eod(files: TokenizerFiles) -> str | None:
    if files.config is None:
        return None
    try:
        data = json.loads(files.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{files.config}: cannot read it: {exc}") from None
    token = data.get("eos_token") if isinstance(data, dict) else None
    if isinstance(token, dict):  # transformers' AddedToken form
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def load_tokenizer(path: Path | str, *, backend: str = "auto", eod_token: str = "") -> TextTokenizer:
    """Load the tokenizer at ``path`` with ``backend`` (auto: gigatoken, falling back to HF).

    ``eod_token`` names the end-of-document token; empty means the
    ``eos_token`` of a ``tokenizer_config.json`` beside it, else the first of
    the usual names (``<|endoftext|>``, ``</s>``, ...) in the vocabulary.
    """
    if backend not in BACKENDS:
        raise TokenizerError(f"tokenizer backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    files = find_tokenizer(path)
    hf = None
    impl: Any = None
    chosen = backend
    if backend in ("auto", "gigatoken"):
        try:
            impl = _gigatoken_tokenizer(files, None)
            chosen = "gigatoken"
        except ImportError:
            if backend == "gigatoken":
                raise TokenizerError("tokenizer backend gigatoken: the gigatoken package is not installed") from None
        except Exception as exc:  # gigatoken raises ValueError/RuntimeError/OSError for what it cannot load
            if backend == "gigatoken":
                raise TokenizerError(f"tokenizer {files.path}: gigatoken cannot load it: {exc}") from None
    if impl is None:
        hf = _hf_tokenizer(files)
        impl, chosen = hf, "hf"

    if chosen == "gigatoken":
        vocab_size = int(impl.vocab_size)
        lookup = _gigatoken_lookup(impl)
    else:
        vocab_size = int(impl.get_vocab_size(with_added_tokens=True))
        lookup = impl.token_to_id

    wanted = eod_token or _configured_eod(files)
    if wanted:
        eod_id = lookup(wanted)
        if eod_id is None:
            raise TokenizerError(f"tokenizer {files.path}: end-of-document token {wanted!r} is not in its vocabulary")
    else:
        for candidate in _EOD_CANDIDATES:
            eod_id = lookup(candidate)
            if eod_id is not None:
                wanted = candidate
                break
        else:
            raise TokenizerError(
                f"tokenizer {files.path}: no end-of-document token found; name one with data.eod_token"
            )
    return TextTokenizer(files=files, backend=chosen, vocab_size=vocab_size, eod_id=int(eod_id),
                         eod_token=wanted, _impl=impl)


def _gigatoken_lookup(tokenizer: Any):
    by_bytes = {token: i for i, token in tokenizer.vocab.items()}

    def lookup(token: str) -> int | None:
        return by_bytes.get(token.encode("utf-8"))

    return lookup
