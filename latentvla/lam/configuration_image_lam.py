"""Configs of the image latent action model, its trainer and the annotation command.

Light module (no torch import): `latentvla lam image-train --help` and `latentvla lam annotate
--help` are generated from `ImageLAMTrainConfig` / `AnnotateConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from latentvla.config import arg, check_min
from latentvla.errors import LatentVLAError


@dataclass
class ImageLAMConfig:
    """Architecture of the UniVLA-style LAM. Defaults are the paper's sizes."""

    model_dim: int = 768
    enc_blocks: int = 12
    dec_blocks: int = 12
    num_heads: int = 12
    latent_dim: int = 128
    codebook_size: int = 16  # task-centric codebook (the task-irrelevant one has the same size)
    num_codes: int = 4  # codes per transition (per branch)
    stage: int = 2  # 1: task-irrelevant + language; 2: adds the task-centric codebook
    dino_dim: int = 768  # width of the DINO patch tokens
    num_patches: int = 256  # DINO patch tokens per frame
    image_size: int = 224
    image_resample: str = "bicubic"  # resize filter of the frames (training and annotation must agree)
    pair_offset: int = 32  # k of the training pairs (t, t+k); the action head regresses k actions
    action_dim: int = 7  # D of the regressed action chunk (0: no action head)
    text_dim: int = 768  # T5 hidden size (stage 1)
    dropout: float = 0.0

    def validate(self, source: str = "LAM config") -> None:
        check_min(self, ("model_dim", "enc_blocks", "dec_blocks", "num_heads", "latent_dim", "codebook_size",
                         "num_codes", "dino_dim", "num_patches", "image_size", "pair_offset"), prefix=f"{source}: ")
        if self.model_dim % self.num_heads:
            raise LatentVLAError(f"{source}: model_dim {self.model_dim} is not divisible by num_heads {self.num_heads}")
        if self.stage not in (1, 2):
            raise LatentVLAError(f"{source}: stage must be 1 or 2, got {self.stage}")
        check_min(self, ("action_dim",), 0, prefix=f"{source}: ")
        from latentvla.data.transforms import check_resample  # numpy + PIL only: keeps this module light

        check_resample(self.image_resample, f"{source}: image_resample")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "LAM config") -> ImageLAMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LatentVLAError(f"{source}: unknown LAM config key(s) {', '.join(unknown)}")
        from latentvla.data.transforms import LEGACY_RESAMPLE  # numpy + PIL only: keeps this module light

        cfg = cls(**{"image_resample": LEGACY_RESAMPLE, **data})
        cfg.validate(source)
        return cfg


@dataclass
class ImageLAMTrainConfig:
    """Train the image latent action model (UniVLA-style VQ-VAE on frozen DINOv2 features)."""

    data_root_dir: str = arg("", "Directory holding <name>/<version>/ RLDS builder dirs.")
    data_mix: str = arg("", "Mixture name, dataset name, or JSON list of dataset names.")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering extra datasets.")
    dino_path: str | None = arg(None, "DINOv2-with-registers: HF directory, original .pth or Hugging Face repo id "
                                         "(may be omitted when --lam_path carries dino_encoder weights).")
    lam_path: str | None = arg(None, "Start from this checkpoint: UniVLA stage-2 Lightning .ckpt or one of ours, or "
                                        "a Hugging Face repo id holding one.")
    stage_one_ckpt: str | None = arg(None, "Stage-1 checkpoint whose task-irrelevant codebook and "
                                           "queries start stage 2.")
    t5_path: str | None = arg(None, "Local T5 encoder directory (stage 1 language conditioning).")
    stage: Literal[1, 2] = arg(2, "1: task-irrelevant codes with language (needs --t5_path); 2: task-centric codes.")
    results_dir: str = arg("runs/lam", "Run directory root; the run lives in <results_dir>/<run_id>/.")
    run_id: str | None = arg(None, "Run name (default: lam-stage<stage>-<data_mix>).")
    max_steps: int = arg(1000, "Optimizer steps to train.")
    batch_size: int = arg(64, "Frame pairs per step (per process).")
    model_dim: int = arg(768, "Transformer width.")
    enc_blocks: int = arg(12, "Encoder spatio-temporal blocks.")
    dec_blocks: int = arg(12, "Decoder spatial blocks.")
    num_heads: int = arg(12, "Attention heads.")
    latent_dim: int = arg(128, "Code vector size.")
    codebook_size: int = arg(16, "Codes per codebook.")
    num_codes: int = arg(4, "Codes per transition.")
    pair_offset: int = arg(32, "Frame distance k of training pairs (t, min(t+k, T-1)).")
    image_size: int = arg(224, "Frame size fed to DINO (a multiple of its patch size).")
    image_resample: Literal["bicubic", "bilinear", "lanczos"] = arg(
        "bicubic", "Frame resize filter (antialiased); saved with the LAM so annotation resizes the same way.")
    learning_rate: float = arg(1e-4, "AdamW learning rate.")
    weight_decay: float = arg(0.01, "AdamW weight decay.")
    grad_clip: float = arg(0.1, "Gradient norm clip (0: off).")
    commitment_weight: float = arg(0.25, "Weight of the VQ commitment loss.")
    action_loss_weight: float = arg(0.5, "Weight of the action-regression loss (stage 2; 0: off).")
    action_loss_fraction: float = arg(0.1, "Fraction of each batch that gets the action loss.")
    code_restart_every: int = arg(100, "Restart unused codes of the trainable codebook every N steps (0: never).")
    log_every: int = arg(10, "Log metrics every N steps.")
    save_every: int = arg(1000, "Checkpoint every N steps (and at the end).")
    keep_checkpoints: int = arg(2, "Keep this many most recent checkpoints (0: all).")
    resume: bool = arg(True, "Continue from the latest checkpoint of the run directory when there is one.")
    non_strict: bool = arg(False, "Load --lam_path even when keys are missing or unexpected (reported).")
    num_workers: int = arg(0, "DataLoader worker processes.")
    image_aug: bool = arg(False, "Augment frames (random crop + color jitter, same for both frames).")
    device: str | None = arg(None, "cpu, cuda, cuda:N (default: cuda when available).")
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = arg("auto", "auto = bf16 on GPU, fp32 on CPU.")
    seed: int = arg(42, "Seed for weights, sampling and augmentation.")
    use_wandb: bool = arg(False, "Also log to Weights & Biases (SwanLab: set ENABLE_SWANLAB=1).")
    wandb_project: str = arg("latentvla", "W&B / SwanLab project.")
    use_tensorboard: bool = arg(False, "Also log to TensorBoard (<run>/tensorboard).")

    def validate(self) -> None:
        if not self.data_root_dir or not self.data_mix:
            raise LatentVLAError("--data_root_dir and --data_mix are required")
        if not self.dino_path and not self.lam_path:
            raise LatentVLAError("--dino_path is required (or a --lam_path that carries dino_encoder weights)")
        if self.stage == 1 and not self.t5_path:
            raise LatentVLAError("--stage 1 needs --t5_path (a local T5 encoder directory)")
        if self.stage == 1 and self.stage_one_ckpt:
            raise LatentVLAError("--stage_one_ckpt is for stage 2; drop it or pass --stage 2")
        check_min(self, ("max_steps", "batch_size", "log_every", "save_every"))
        if not 0.0 <= self.action_loss_fraction <= 1.0:
            raise LatentVLAError(f"--action_loss_fraction must be in [0, 1], got {self.action_loss_fraction}")
        self.model_config(dino_dim=1, num_patches=1, action_dim=0).validate("image-train")

    def model_config(self, *, dino_dim: int, num_patches: int, action_dim: int, text_dim: int = 768) -> ImageLAMConfig:
        return ImageLAMConfig(
            model_dim=self.model_dim, enc_blocks=self.enc_blocks, dec_blocks=self.dec_blocks,
            num_heads=self.num_heads, latent_dim=self.latent_dim, codebook_size=self.codebook_size,
            num_codes=self.num_codes, stage=int(self.stage), dino_dim=dino_dim, num_patches=num_patches,
            image_size=self.image_size, image_resample=self.image_resample, pair_offset=self.pair_offset,
            action_dim=action_dim, text_dim=text_dim,
        )


@dataclass
class AnnotateConfig:
    """Annotate an RLDS dataset with image-LAM latent actions (steps/latent_idx, steps/latent_z)."""

    lam_ckpt: str = arg("",
                        "LAM checkpoint: a `lam image-train` run dir (its newest checkpoint) or "
                        "checkpoints/step_N dir, or a UniVLA Lightning .ckpt, or a Hugging Face repo id holding one.",
                        aliases=("--lam_path",))
    data_root_dir: str | None = arg(None, "Directory holding <name>/<version>/ (with --data_mix).")
    data_mix: str | None = arg(None, "Dataset name (or JSON list of names) to annotate.")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering extra datasets.")
    dataset_dir: str | None = arg(None, "Annotate this builder dir <root>/<name>/<version> instead of --data_mix.")
    image_key: str | None = arg(None, "Step image key (default: the registry's primary camera, else "
                                      "observation/image).")
    output_dir: str | None = arg(None, "Output builder dir (default: <root>/<name>_latent/<version>; "
                                       "one dataset only).")
    dino_path: str | None = arg(None, "DINOv2 backbone (directory, .pth or Hugging Face repo id), when the checkpoint "
                                         "does not carry one.")
    pair_offset: int = arg(11, "k_annotate: pair step t with min(t+k, T-1) (paper annotation: 11).")
    batch_size: int = arg(64, "Frames per forward pass.")
    num_heads: int | None = arg(None, "Attention heads of a UniVLA .ckpt (default: its hyper_parameters "
                                         "lam_num_heads, else 12).")
    lam_pair_offset: int | None = arg(None, "k a UniVLA .ckpt was trained with, to size its action head (default: "
                                               "its hyper_parameters goal_image_step, else 32; the head "
                                               "is unused here).")
    non_strict: bool = arg(False, "Load the checkpoint even when keys are missing or unexpected (reported).")
    overwrite: bool = arg(False, "Replace an existing complete annotation.")
    in_place: bool = arg(False, "Replace the input dataset by its annotated copy once that is complete.")
    splits: list[str] | None = arg(None, "Splits to annotate (default: all).")
    device: str | None = arg(None, "cpu, cuda, cuda:N (default: cuda when available).")
    mixed_precision: Literal["auto", "bf16", "no"] = arg("auto", "auto = bf16 on GPU, fp32 on CPU.")
    decode_threads: int | None = arg(None, "JPEG decode threads (default: min(8, CPU count)).")

    def validate(self) -> None:
        if not self.lam_ckpt:
            raise LatentVLAError("--lam_ckpt is required")
        if bool(self.dataset_dir) == bool(self.data_mix):
            raise LatentVLAError("give either --dataset_dir or --data_root_dir with --data_mix")
        if self.data_mix and not self.data_root_dir:
            raise LatentVLAError("--data_mix needs --data_root_dir")
        if self.in_place and self.output_dir:
            raise LatentVLAError("--in_place and --output_dir exclude each other")
        if self.pair_offset < 1 or self.batch_size < 1:
            raise LatentVLAError("--pair_offset and --batch_size must be >= 1")
        check_min(self, ("lam_pair_offset",))
