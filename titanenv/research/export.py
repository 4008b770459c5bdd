"""A TorchTitan checkpoint as a Hugging Face Llama directory.

- **Weights**: the model is built from the spec our registry makes for the
  run's TOML (``titanenv.train.registry.model_spec``), on CPU, and its
  weights alone are read from the (full training-state) DCP checkpoint the
  way TorchTitan reads a model-only checkpoint: ``dcp.load`` into the model's
  own state dict, then ``load_state_dict``. TorchTitan's llama3 state-dict
  adapter (``to_hf``) maps them to HF names and permutes Q/K for HF's rotary
  layout; they are written as one ``model.safetensors`` in the dtype asked.
- **config.json** is built from the same spec (dimensions, heads, FFN width,
  norm epsilon, rope theta and llama3 scaling, weight tying), never from a
  table of flavors; TorchTitan writes none.
- **Tokenizer** files are copied from the TOML's ``[data] tokenizer``
  directory, with a ``tokenizer_config.json`` naming the end-of-text token
  when it has none, and a ``generation_config.json`` is written.

Everything goes to a temporary directory beside the output and is renamed
into place at the end: a failed export leaves nothing half-written, and an
existing export is replaced only when asked.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from titanenv.research.experiment import ResearchError
from titanenv.train.jobconfig import JobConfig

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json")
EXPORT_RECORD = "titanenv_export.json"


def dtype_name(value: str, option: str = "--dtype") -> str:
    try:
        return DTYPES[value.strip().lower()]
    except KeyError:
        raise ResearchError(f"{option} {value!r}: choose float32, bfloat16 or float16") from None


def default_dtype(job: JobConfig, configured: str = "") -> str:
    """``research.dtype`` when set, else the recipe's parameter dtype (TorchTitan's default bfloat16).

    A GPU recipe trains its parameters in bfloat16 (``training.mixed_precision_param``),
    the CPU recipe in float32: the export keeps what the model was trained in.
    """
    if configured:
        return dtype_name(configured, "research.dtype")
    return dtype_name(str(job.get("training.mixed_precision_param", "bfloat16")),
                      f"{job.path} training.mixed_precision_param")


def build_spec(job: JobConfig):
    """The model spec of the TOML, with SDPA attention (causal over one sequence: what inference needs)."""
    from titanenv.train.registry import model_spec

    return model_spec({**job.model, "attention": "sdpa"})


def load_model(job: JobConfig, checkpoint: Path):
    """TorchTitan's model for ``job`` on CPU in float32, weights from ``checkpoint``; ``(model, spec)``."""
    import torch
    import torch.distributed.checkpoint as dcp

    spec = build_spec(job)
    with torch.device("meta"):
        model = spec.model.build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_states(buffer_device=torch.device("cpu"))  # RoPE caches; weights are overwritten below
    state = model.state_dict()
    try:
        import warnings

        with warnings.catch_warnings():
            # "torch.distributed is ... uninitialized, assuming ... a single process": just so.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            # Only the model's keys are read: optimizer and data loader states stay on disk.
            dcp.load(state, checkpoint_id=str(checkpoint))
    except Exception as exc:  # DCP raises CheckpointException and friends, with every rank's trace
        first = str(exc).strip().splitlines()
        raise ResearchError(f"{checkpoint}: cannot read the model from this checkpoint with the TOML's shape "
                            f"({job.path}): {first[0] if first else type(exc).__name__}") from None
    model.load_state_dict(state)
    model.eval()
    return model, spec


@dataclass(frozen=True)
class TokenizerInfo:
    eos_token: str
    eos_id: int
    bos_token: str | None
    bos_id: int | None


def tokenizer_info(directory: Path) -> TokenizerInfo:
    from titanenv.data.tokenizer import find_tokenizer, load_tokenizer

    loaded = load_tokenizer(directory, backend="hf")
    bos_token = bos_id = None
    files = find_tokenizer(directory)
    if files.config is not None:
        data = json.loads(files.config.read_text(encoding="utf-8"))
        token = data.get("bos_token")
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token:
            bos_token, bos_id = token, loaded.token_id(token)
    return TokenizerInfo(loaded.eod_token, loaded.eod_id, bos_token, bos_id)


def hf_config(spec, dtype: str, tokens: TokenizerInfo | None = None) -> dict[str, Any]:
    """``config.json`` of a ``LlamaForCausalLM`` with the shape of TorchTitan's model config."""
    model = spec.model
    layer = model.layers[0]
    attention = layer.attention
    rope = attention.rope
    if getattr(attention, "qk_norm", None) is not None:
        raise ResearchError(f"model flavor {spec.flavor!r}: Q/K norms have no place in a HF Llama config")
    n_heads = attention.n_heads
    head_dim = attention.head_dim or model.dim // n_heads
    feed_forward = layer.feed_forward
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": model.vocab_size,
        "hidden_size": model.dim,
        "intermediate_size": feed_forward.w1.out_features,
        "num_hidden_layers": len(model.layers),
        "num_attention_heads": n_heads,
        "num_key_value_heads": attention.n_kv_heads or n_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": rope.max_seq_len,
        "rms_norm_eps": model.norm.eps,
        "tie_word_embeddings": bool(model.enable_weight_tying),
        "attention_bias": bool(attention.wo.bias),
        "mlp_bias": bool(feed_forward.w1.bias),
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "rope_theta": float(rope.theta),
        "rope_scaling": _rope_scaling(spec, rope),
    }
    if tokens is not None:
        config["eos_token_id"] = tokens.eos_id
        config["bos_token_id"] = tokens.bos_id if tokens.bos_id is not None else tokens.eos_id
    return config


def _rope_scaling(spec, rope) -> dict[str, Any] | None:
    if rope.scaling == "none":
        return None
    if rope.scaling == "llama":
        return {"rope_type": "llama3", "factor": float(rope.scaling_factor),
                "low_freq_factor": float(rope.low_freq_factor), "high_freq_factor": float(rope.high_freq_factor),
                "original_max_position_embeddings": int(rope.original_max_position_embeddings)}
    raise ResearchError(f"model flavor {spec.flavor!r}: rope scaling {rope.scaling!r} has no HF Llama equivalent here")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def copy_tokenizer(source: Path, target: Path, tokens: TokenizerInfo, max_length: int) -> list[str]:
    """Copy the tokenizer files HF reads; add a ``tokenizer_config.json`` when the source has none."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    if "tokenizer_config.json" not in copied:
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": tokens.eos_token,
                                  "model_max_length": max_length, "clean_up_tokenization_spaces": False}
        if tokens.bos_token:
            config["bos_token"] = tokens.bos_token
        _write_json(target / "tokenizer_config.json", config)
        copied.append("tokenizer_config.json (written)")
    return copied


@dataclass(frozen=True)
class ExportRequest:
    checkpoint_folder: Path  # the experiment's step-N directories
    step: int | None  # None: the latest
    job: JobConfig
    output: Path | None  # None: <dump folder>/hf/step-N
    dtype: str
    overwrite: bool = False


def default_output(checkpoint_folder: Path, step: int) -> Path:
    return checkpoint_folder.parent / "hf" / f"step-{step}"


def export(request: ExportRequest, echo: Callable[[str], None] = print) -> Path:
    """Write the HF directory of one checkpoint; returns its path."""
    import torch

    from titanenv.research.experiment import find_checkpoint

    step, checkpoint = find_checkpoint(request.checkpoint_folder, request.step)
    output = request.output or default_output(request.checkpoint_folder, step)
    if output.exists() and not request.overwrite:
        raise ResearchError(f"{output} already exists; give --overwrite to replace it, or --output elsewhere")
    tokenizer_dir = Path(request.job.data.get("tokenizer") or "")
    if not request.job.data.get("tokenizer") or not tokenizer_dir.is_dir():
        raise ResearchError(f"{request.job.path}: [data] tokenizer {str(tokenizer_dir)!r} is not a directory")
    dtype = dtype_name(request.dtype)
    tokens = tokenizer_info(tokenizer_dir)

    echo(f"loading {checkpoint} (model weights only) as {request.job.path} builds it")
    model, spec = load_model(request.job, checkpoint)
    state = {key: value.detach() for key, value in model.state_dict().items()}
    hf_state = spec.state_dict_adapter(spec.model, None).to_hf(state)
    torch_dtype = getattr(torch, dtype)
    hf_state = {key: value.to(torch_dtype).contiguous() for key, value in hf_state.items()}

    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        from safetensors.torch import save_file

        save_file(hf_state, str(temporary / "model.safetensors"), metadata={"format": "pt"})
        config = hf_config(spec, dtype, tokens)
        _write_json(temporary / "config.json", config)
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": tokens.eos_id,
                      "pad_token_id": tokens.eos_id, "do_sample": False}
        _write_json(temporary / "generation_config.json", generation)
        copied = copy_tokenizer(tokenizer_dir, temporary, tokens, int(request.job.get("training.seq_len", 2048)))
        _write_json(temporary / EXPORT_RECORD, {
            "checkpoint": str(checkpoint), "step": step, "toml": str(request.job.path), "dtype": dtype,
            "tokenizer": str(tokenizer_dir), "flavor": spec.flavor,
            "parameters": sum(v.numel() for v in hf_state.values()),
        })
        _replace(temporary, output, request.overwrite)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    echo(f"exported step {step} ({dtype}, {sum(v.numel() for v in hf_state.values()):,} parameters) to {output}")
    echo(f"  model.safetensors, config.json, generation_config.json, {', '.join(copied)}")
    return output


def _replace(temporary: Path, output: Path, overwrite: bool) -> None:
    """Rename ``temporary`` to ``output``; an old ``output`` (only with overwrite) is removed after."""
    old = None
    if output.exists():
        if not overwrite:
            raise ResearchError(f"{output} already exists; give --overwrite to replace it")
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(temporary, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
