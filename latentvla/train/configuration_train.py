"""Options of `latentvla train` (and `exp/train_vla.py`): the paper's flags plus ours.

Every flag of the paper's training script is accepted under its name (list in docs/api.md,
Training); defaults work for all five variants (no variant needs an extra flag to run). Light
module: no torch import.

Cheap checks that need nothing but the values themselves live in `TrainConfig.validate()`
(called by the CLI right after parsing); checks that look at files (dataset, backbone dir,
tokenizer checkpoint) live in `latentvla.train.preflight` and also run before any heavy work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from latentvla.config import arg, check_min
from latentvla.errors import LatentVLAError
from latentvla.vla.configuration_vla import VLAOptions

SCHEDULERS = ("constant", "linear-warmup+cosine-decay", "step-decay")


@dataclass
class TrainConfig(VLAOptions):
    """Train a VLA policy. The model options are `VLAOptions`' (copied into the model's `VLAConfig`
    by `run.build_vla_config`); `vlm_path`, `codebook_size`, `latent_codebook_size` are redeclared."""

    # --- run -----------------------------------------------------------------------------------
    seed: int = arg(42, "Random seed (model init, data order, augmentation).")
    run_root_dir: str = arg("runs", "Directory under which the run directory <run_id>/ is created.")
    run_id: str | None = arg(None, "Name of the run directory (default: derived from vla_id, data_mix, "
                                   "batch, lr, seed).")
    run_id_note: str | None = arg(None, "Extra text appended to the derived run id.")
    save_checkpoint: bool = arg(True, "Write checkpoints (every --save_step and at the end).")
    save_step: int = arg(5000, "Save a checkpoint every this many optimizer steps.")
    keep_checkpoints: int = arg(3, "Keep only the newest N complete checkpoints (0 = keep all).")
    resume: bool = arg(False, "Continue from the newest intact checkpoint in the run directory (a damaged newest one "
                              "is reported and set aside); refused when the run directory does not exist.")
    resume_or_start: bool = arg(False, "Like --resume True, but start the run when its directory does not exist yet "
                                       "(for job scripts resubmitted unchanged).")
    from_pretrained: bool = arg(False, "Warm-start the trainable weights from --pretrained_checkpoint (weights only); "
                                       "without it that flag is ignored.")
    pretrained_checkpoint: str | None = arg(None, "A checkpoint directory written by `latentvla train` (or a Hugging "
                                               "Face repo id) to warm-start from with --from_pretrained True.")
    merge_lora: bool = arg(False, "At the end, also export merged full weights (backbone with LoRA folded in) "
                                  "for deployment.")

    # --- model (besides VLAOptions) ----------------------------------------------------------
    vlm_path: str = arg("", "Qwen3-VL directory (Hugging Face layout) used as the backbone, or a Hugging Face repo id "
                        "org/name[@revision] (HF cache; HF_HUB_OFFLINE=1 reads only the cache).")
    vlm_model_id: str | None = arg(None, "Name of the backbone, recorded in the run config (e.g. "
                                         "Qwen3-VL-2B-Instruct).")
    action_tokenizer_ckpt: str | None = arg(None, "la_tok: action tokenizer checkpoint (from `latentvla lam "
                                                  "action-train`).")
    codebook_size: int | None = arg(None, "la_tok: action tokenizer codebook size M (checked against the checkpoint; "
                                          "default: read from it).")
    latent_codebook_size: int | None = arg(None, "la_direct / la_cond: image-LAM codebook size K of the annotation "
                                                 "(default: the annotation's latent_annotation.json, else 16).")
    use_latent: bool | None = arg(None, "Accepted for compatibility; whether latent labels are used "
                                        "follows from --vla_id.")
    type: str | None = arg(None, "Accepted for compatibility (the paper scripts' latent type); --vla_id "
                                 "decides the variant.")

    # --- data ----------------------------------------------------------------------------------
    data_root_dir: str = arg("", "Directory holding <name>/<version>/ RLDS (TFDS) builder directories.")
    data_mix: str = arg("libero_goal", "Mixture name, dataset name, or JSON list of names, e.g. '[\"libero_goal\"]'.")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering your own datasets/mixtures.")
    robot: str | None = arg(None, "Robot platform override (default: the dataset registry entry decides).")
    shuffle_buffer_size: int = arg(256000, "Accepted for compatibility and ignored: sampling is uniform over "
                                           "all transitions.")
    image_aug: bool = arg(True, "Random crop + color jitter on training images.")
    image_resample: Literal["bicubic", "bilinear", "lanczos"] = arg(
        "bicubic", "Resize filter for images (antialiased); saved in the checkpoint so inference resizes the same way. "
        "lanczos = the reference TF pipeline's, ~8x slower per image (docs/data.md).")
    window_size: int | None = arg(None, "Action chunk length; must equal the platform's chunk length (default: it).")
    num_workers: int = arg(2, "DataLoader worker processes per rank.")

    # --- optimisation --------------------------------------------------------------------------
    epochs: int = arg(1, "Passes over the data; bounds training when --max_steps is not given.")
    max_steps: int | None = arg(None, "Number of optimizer steps (wins over --epochs).")
    global_batch_size: int | None = arg(None, "Samples per optimizer step over all ranks (default: per_device x "
                                              "world); gradient accumulation makes up the rest.")
    per_device_batch_size: int = arg(8, "Samples per forward pass on each rank.")
    learning_rate: float = arg(2e-4, "Peak learning rate (AdamW).")
    weight_decay: float = arg(0.0, "AdamW weight decay.")
    max_grad_norm: float = arg(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    lr_scheduler_type: str = arg("constant", "Schedule: " + ", ".join(SCHEDULERS) + ".")
    warmup_ratio: float = arg(0.03, "Fraction of steps with linear warm-up (the paper's 0.03; honoured by "
                                    "every schedule).")
    lr_decay_steps: list[int] = arg([], "step-decay: steps at which the lr is multiplied by --lr_decay_gamma (default: "
                                        "at 80 percent of training).")
    lr_decay_gamma: float = arg(0.1, "step-decay: multiplicative factor.")
    strategy: Literal["ddp", "fsdp"] = arg("ddp", "Multi-process strategy under torchrun: DDP or FSDP2 (fully_shard).")
    precision: Literal["auto", "bf16", "fp32"] = arg("auto", "auto = bf16 autocast on GPU, fp32 on CPU.")
    device: str | None = arg(None, "cuda or cpu (default: cuda when available).")

    # --- validation and logging ----------------------------------------------------------------
    use_val: bool = arg(False, "Periodically compute validation L1 on held-out episodes.")
    val_step: int = arg(1000, "Validate every this many steps (with --use_val).")
    val_fraction: float = arg(0.05, "Fraction of episodes held out for --use_val when the dataset has no 'val' split.")
    val_batches: int = arg(20, "Batches per validation pass.")
    log_step: int = arg(1, "Write a metrics.jsonl record every this many steps.")
    use_wandb: bool = arg(False, "Log to Weights & Biases (needs `pip install latentvla[wandb]`).")
    wandb_project: str = arg("latentvla", "W&B project.")
    wandb_entity: str | None = arg(None, "W&B entity (team or user).")
    use_tensorboard: bool = arg(False, "Also log to TensorBoard under <run_dir>/tensorboard.")
    progress: bool = arg(True, "Show a progress bar (rank 0).")

    def validate(self) -> None:
        """Checks that need only the values (raise LatentVLAError naming the flag)."""
        self.check_variant("--")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise LatentVLAError(f"--lr_scheduler_type {self.lr_scheduler_type!r} is unknown; expected one of: "
                                 f"{', '.join(SCHEDULERS)}")
        check_min(self, ("per_device_batch_size", "save_step", "log_step", "val_step", "val_batches",
                         "default_image_size", "epochs", "max_steps", "global_batch_size"))
        if self.default_image_size % 32:
            raise LatentVLAError(f"--default_image_size must be a multiple of 32, got {self.default_image_size}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise LatentVLAError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.val_fraction < 1.0:
            raise LatentVLAError(f"--val_fraction must be in (0, 1), got {self.val_fraction}")
        check_min(self, ("learning_rate", "max_grad_norm", "weight_decay", "token_loss_weight", "latent_loss_weight"),
                  0)
        if self.num_workers < 0 or self.keep_checkpoints < 0:
            raise LatentVLAError("--num_workers and --keep_checkpoints must be >= 0")
        check_min(self, ("window_size",))
        if self.merge_lora and not self.save_checkpoint:
            raise LatentVLAError("--merge_lora True exports the final checkpoint; it needs --save_checkpoint True")
        if self.from_pretrained and not self.pretrained_checkpoint:
            raise LatentVLAError("--from_pretrained True needs --pretrained_checkpoint DIR (a checkpoint written by "
                                 "latentvla train)")
        if not self.vlm_path:
            raise LatentVLAError("--vlm_path is required: a local Qwen3-VL directory (config.json + "
                                 "weights + tokenizer) or a Hugging Face repo id")
        if not self.data_root_dir:
            raise LatentVLAError("--data_root_dir is required: the directory holding <name>/<version>/ dataset dirs")
        world = world_size_from_env()
        self.accumulation_steps(world)  # raises when not divisible

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank; error when the sizes do not divide."""
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size is None:
            return 1
        if self.global_batch_size % per_step:
            raise LatentVLAError(
                f"--global_batch_size {self.global_batch_size} is not divisible by --per_device_batch_size "
                f"{self.per_device_batch_size} x world size {world_size} = {per_step}; choose a multiple of {per_step}")
        return self.global_batch_size // per_step

    def default_run_id(self) -> str:
        try:
            import json

            mix = json.loads(self.data_mix)
            mix = "+".join(mix) if isinstance(mix, list) else str(mix)
        except ValueError:
            mix = self.data_mix
        batch = self.global_batch_size or f"{self.per_device_batch_size}x"
        rid = f"{self.vla_id}+{mix}+b{batch}+lr{self.learning_rate:g}+s{self.seed}"
        if self.run_id_note:
            rid += f"--{self.run_id_note}"
        return "".join(c if c.isalnum() or c in "+-_.=" else "_" for c in rid)


def world_size_from_env() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1
