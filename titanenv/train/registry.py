"""``--module titanenv.train.registry --config from_toml``: TorchTitan's config registry extension point.

TorchTitan imports this module and calls the named function for the
``Trainer.Config`` it then overrides with its command-line options (which
``python -m titanenv.train`` makes from the TOML's TorchTitan sections).
That config builds :func:`trainer_class`, TorchTitan's own ``Trainer`` that
also stops at a step boundary when asked (:mod:`titanenv.train.stop`).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from titanenv.train.jobconfig import JobConfig, read_resolved


def model_spec(model: dict[str, Any]):
    """A llama3 flavor of TorchTitan, or a custom Llama-3 shape; inner attention as configured."""
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm, compute_ffn_hidden_dim
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.llama3 import model_registry
    from torchtitan.models.llama3 import __dict__ as llama3_parts
    from torchtitan.models.llama3.model import Llama3Model

    flavor = model.get("flavor", "custom")
    if flavor != "custom":
        spec = model_registry(flavor)
    else:
        dim, heads, vocab = int(model["dim"]), int(model["n_heads"]), int(model["vocab_size"])
        spec = model_registry("debugmodel")
        spec = dataclasses.replace(spec, flavor="custom", model=Llama3Model.Config(
            dim=dim,
            vocab_size=vocab,
            tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim,
                                            param_init=llama3_parts["_EMBEDDING_INIT"]),
            norm=RMSNorm.Config(normalized_shape=dim, param_init=llama3_parts["_NORM_INIT"]),
            lm_head=Linear.Config(in_features=dim, out_features=vocab,
                                  param_init=llama3_parts["_output_linear_init"](dim)),
            layers=llama3_parts["_build_llama3_layers"](
                fuse_qkv=True,
                n_layers=int(model["n_layers"]),
                dim=dim,
                n_heads=heads,
                n_kv_heads=model.get("n_kv_heads"),
                hidden_dim=compute_ffn_hidden_dim(dim, multiple_of=int(model.get("multiple_of", 64))),
                rope=ComplexRoPE.Config(dim=dim // heads, max_seq_len=131072, theta=500000, scaling="llama"),
                attn_backend="flex",
            ),
        ))
    if model.get("attention", "sdpa") == "sdpa":
        # Causal attention over each packed window (no per-document masks):
        # runs everywhere, FlexAttention has no CPU backward.
        for layer in spec.model.layers:
            layer.attention.inner_attention = ScaledDotProductAttention.Config()
    return spec


def activation_checkpoint(job: JobConfig):
    """[activation_checkpoint]: ``mode`` picks TorchTitan's policy, the other keys are its fields."""
    from torchtitan.distributed.activation_checkpoint import FullAC, MemoryBudgetAC, SelectiveAC

    fields = dict(job.torchtitan.get("activation_checkpoint", {}))
    mode = fields.pop("mode", "selective")
    policies = {"selective": SelectiveAC, "full": FullAC, "memory-budget": MemoryBudgetAC, "none": None}
    if mode not in policies:
        raise ValueError(f"[activation_checkpoint] mode = {mode!r}: use one of {', '.join(policies)}")
    if policies[mode] is None:
        if fields:
            raise ValueError(f"[activation_checkpoint] {next(iter(fields))}: mode none takes no options")
        return None
    return policies[mode].Config(**fields)


def trainer_config(job: JobConfig):
    from torchtitan.components.checkpoint import CheckpointManager
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.components.metrics import MetricsProcessor
    from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
    from torchtitan.components.validate import Validator
    from torchtitan.config import TrainingConfig
    from torchtitan.models.common.config_utils import decoder_vocab_size

    from titanenv.train.loader import PretokenizedDataLoader, ValidationDataLoader

    spec = model_spec(job.model)
    vocab = decoder_vocab_size(spec)
    return trainer_class().Config(
        model_spec=spec,
        hf_assets_path=str(job.data.get("tokenizer", "")),
        loss=ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(global_vocab_size=vocab)),
        optimizer=default_adamw(lr=float(job.get("optimizer.lr", 3e-3))),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=2, decay_ratio=0.8, decay_type="linear",
                                                  min_lr_factor=0.1),
        training=TrainingConfig(local_batch_size=4, seq_len=256, steps=40),
        dataloader=PretokenizedDataLoader.Config(
            paths=[str(p) for p in job.data.get("datasets", [])],
            weights=[float(w) for w in job.data.get("weights", [])],
            seed=int(job.data.get("seed", 1234)),
            num_workers=int(job.data.get("num_workers", 0)),
            vocab_size=vocab,
        ),
        # [validator] enable, freq and steps stay TorchTitan's options; the
        # loader is ours, over [data] valid_datasets (never TorchTitan's
        # default, which streams c4_validation from the Hub). It reads in the
        # main process: the validator builds it anew for every validation.
        validator=Validator.Config(dataloader=ValidationDataLoader.Config(
            paths=[str(p) for p in job.data.get("valid_datasets", [])],
            weights=[float(w) for w in job.data.get("valid_weights", [])],
            seed=int(job.data.get("seed", 1234)),
            vocab_size=vocab,
        )),
        metrics=MetricsProcessor.Config(log_freq=1),
        checkpoint=CheckpointManager.Config(interval=20, last_save_model_only=False),
        activation_checkpoint=activation_checkpoint(job),
    )


@functools.cache
def trainer_class():
    """TorchTitan's ``Trainer``, stopping early on request with a checkpoint to resume from.

    Its ``Config`` is TorchTitan's own (same fields, same options); declaring
    it here makes ``Config.build()`` construct this class. Made on first use,
    so importing this module does not import TorchTitan.
    """
    from torchtitan.trainer import Trainer

    from titanenv.train import stop

    class StoppingTrainer(Trainer):
        """Ends the training loop at a step boundary once any rank is asked to stop (titanenv.train.stop)."""

        @dataclasses.dataclass(kw_only=True, slots=True)
        class Config(Trainer.Config):
            pass

        def __init__(self, config: Config) -> None:
            super().__init__(config)
            self.stop_agreement = stop.Agreement()
            if config.checkpoint.enable and config.checkpoint.load_step == -1:
                _set_aside_unreadable(Path(config.dump_folder) / config.checkpoint.folder)
            self.first_step: int | None = None  # the step this job started after

        def should_continue_training(self) -> bool:
            if self.first_step is None:
                self.first_step = self.step
            if not super().should_continue_training():
                return False
            # Every job trains at least one step, so each link of a chain gets
            # on even when asked to stop while it was starting (the lead
            # covers a step and a checkpoint).
            if self.step == self.first_step or not self.stop_agreement.reached():
                return True
            stop.save_for_resume(self.checkpointer, self.step)
            return False

    return StoppingTrainer


def _set_aside_unreadable(folder: Path) -> None:
    """Rank 0 moves damaged newest checkpoints out of the way; every rank then resumes from the same one."""
    import torch.distributed as dist

    from titanenv.train import checkpoints, stop

    if not dist.is_initialized() or dist.get_rank() == 0:
        checkpoints.set_aside_unreadable(folder, stop.log)
    if dist.is_initialized():
        dist.barrier()


def from_toml():
    """The Trainer.Config of the TOML named by $TITANENV_TRAIN_TOML."""
    return trainer_config(read_resolved())
