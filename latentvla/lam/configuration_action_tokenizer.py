"""Configs of the VQ action-chunk tokenizer: the model and `latentvla lam action-train`.

Light module: no torch import, so `latentvla lam action-train --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latentvla.config import arg, check_min
from latentvla.errors import LatentVLAError


@dataclass
class ActionTokenizerConfig:
    """Sizes of the tokenizer. Defaults are the paper's; action_dim/chunk_len come from
    the platform. chunk_len=None means "any length" (the paper's own files do not record it)."""

    action_dim: int = 7
    chunk_len: int | None = 8
    hidden_dim: int = 128
    codebook_size: int = 256
    num_heads: int = 4
    ffn_dim: int = 256
    num_layers: int = 2
    decoder_hidden_dim: int = 256
    dilations: tuple[int, ...] = (1, 2, 4)
    dropout: float = 0.0
    fft_norm: str = "backward"  # torch.fft norm of the frequency features
    ema_decay: float = 0.99
    ema_eps: float = 1e-5

    def validate(self, source: str = "tokenizer config") -> ActionTokenizerConfig:
        for key in ("action_dim", "hidden_dim", "codebook_size", "num_heads", "ffn_dim", "num_layers",
                    "decoder_hidden_dim"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise LatentVLAError(f"{source}: {key} must be a positive integer, got {v!r}")
        if self.chunk_len is not None and (not isinstance(self.chunk_len, int) or self.chunk_len < 1):
            raise LatentVLAError(f"{source}: chunk_len must be a positive integer or None, got {self.chunk_len!r}")
        if self.hidden_dim % self.num_heads:
            raise LatentVLAError(f"{source}: hidden_dim {self.hidden_dim} is not divisible by num_heads "
                                 f"{self.num_heads}")
        if len(self.dilations) != 3:
            raise LatentVLAError(f"{source}: dilations must have 3 entries (conv1..conv3), got {list(self.dilations)}")
        if not 0.0 < self.ema_decay < 1.0:
            raise LatentVLAError(f"{source}: ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.fft_norm not in ("backward", "ortho", "forward"):
            raise LatentVLAError(f"{source}: fft_norm must be backward, ortho or forward, got {self.fft_norm!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "tokenizer config") -> ActionTokenizerConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise LatentVLAError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if "dilations" in d:
            d["dilations"] = tuple(int(x) for x in d["dilations"])
        return cls(**d).validate(source)


@dataclass
class ActionTrainConfig:
    """Train the VQ action-chunk tokenizer on the action chunks of an RLDS data mix."""

    data_root_dir: str = arg("", "Directory holding <name>/<version>/ TFDS builder dirs.")
    data_mix: str = arg("", "Mixture name, dataset name, or JSON list of names (one platform).")
    results_dir: str = arg("", "Output directory: tokenizer_step_{N}.pt, metrics.jsonl, report.json.")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering extra datasets.")
    num_steps: int = arg(100_000, "Optimizer steps in total (the paper: 100k).")
    batch_size: int = arg(8, "Action chunks per step, over all processes (the paper: 8).")
    learning_rate: float = arg(1e-4, "Adam learning rate.", aliases=("--lr",))
    save_every: int = arg(10_000, "Write tokenizer_step_{N}.pt every N steps (and at the end).")
    log_every: int = arg(100, "Log metrics (over the last N steps) every N steps.")
    keep_last: int | None = arg(None, "Keep only the newest N checkpoints (None = keep all).")
    resume: bool = arg(False, "Continue from the newest tokenizer_step_{N}.pt in results_dir (exactly: weights, "
                              "optimizer, data position, RNG); start when there is none.")
    init_checkpoint: str | None = arg(None, "Start from these weights (ours or the paper's .pt; sizes come from it); "
                                            "a new optimizer.")
    seed: int = arg(42, "Seed of weights, sampling and masking.")
    device: str = arg("auto", "auto (cuda when present), cpu, cuda, cuda:N.")
    num_workers: int = arg(0, "DataLoader worker processes.")
    split: str = arg("train", "Dataset split to read.")
    codebook_size: int = arg(256, "Number of codes M.")
    hidden_dim: int = arg(128, "Latent width (encoder, codes).")
    mask_ratio: float = arg(0.15, "Fraction of encoder outputs zeroed for the masked re-encoding loss.")
    mask_loss_weight: float = arg(1.0, "Weight of the masked re-encoding MSE.")
    commitment_weight: float = arg(0.25, "Weight of the commitment loss.")
    ema_decay: float = arg(0.99, "EMA decay of the codebook.")
    restart_every: int = arg(200, "Restart codes unused during the last N steps (0 = never).")
    init_batches: int = arg(8, "Batches whose encoder outputs initialise the codebook (0 = random init).")
    grad_clip: float | None = arg(1.0, "Clip the gradient norm (None = no clipping).")
    eval_batches: int = arg(32, "Batches drawn with a fixed seed for the final report's metrics.")
    run_name: str | None = arg(None, "Run name for W&B / SwanLab (default: the results_dir name).")
    use_wandb: bool = arg(False, "Also log to Weights & Biases (SwanLab: set ENABLE_SWANLAB=1).")
    wandb_project: str = arg("latentvla", "W&B / SwanLab project.")
    use_tensorboard: bool = arg(False, "Also log to TensorBoard (<results_dir>/tensorboard).")

    def validate(self) -> None:
        missing = [n for n in ("data_root_dir", "data_mix", "results_dir") if not getattr(self, n)]
        if missing:
            raise LatentVLAError(f"--{missing[0]} is required")
        check_min(self, ("num_steps", "batch_size", "save_every", "log_every", "codebook_size", "hidden_dim"))
        if not 0.0 <= self.mask_ratio < 1.0:
            raise LatentVLAError(f"--mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.resume and self.init_checkpoint:
            raise LatentVLAError("--resume and --init_checkpoint exclude each other")
        if self.keep_last is not None and self.keep_last < 1:
            raise LatentVLAError(f"--keep_last must be >= 1 or None, got {self.keep_last}")
