"""Options of `latentvla tiny-dino OUT_DIR` (light module: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from latentvla.config import arg, check_min
from latentvla.errors import LatentVLAError


@dataclass
class TinyDinoConfig:
    """Write a tiny random DINOv2-with-registers checkpoint directory (Hugging Face layout)."""

    out_dir: str = arg(help="Directory to create (config.json, model.safetensors, preprocessor_config.json).",
                       positional=True)
    hidden_size: int = arg(32, "Token width (ViT-B/14: 768).")
    num_layers: int = arg(2, "Number of transformer layers (ViT-B/14: 12).")
    num_heads: int = arg(2, "Attention heads; must divide hidden_size (ViT-B/14: 12).")
    patch_size: int = arg(14, "Patch size in pixels (DINOv2: 14).")
    image_size: int = arg(56, "Native image size; a multiple of patch_size (the model interpolates "
                              "positions for others).")
    num_register_tokens: int = arg(4, "Register tokens (the LAM uses DINOv2 with 4 registers).")
    mlp_ratio: int = arg(4, "MLP width as a multiple of hidden_size.")
    seed: int = arg(0, "Seed of the random weights.")
    overwrite: bool = arg(False, "Replace OUT_DIR if it exists.")

    def validate(self) -> None:
        check_min(self, ("hidden_size", "num_layers", "num_heads", "patch_size", "image_size", "mlp_ratio"))
        check_min(self, ("num_register_tokens",), 0)
        if self.hidden_size % self.num_heads:
            raise LatentVLAError(f"--hidden_size {self.hidden_size} is not divisible by --num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise LatentVLAError(f"--image_size {self.image_size} is not a multiple of --patch_size {self.patch_size}")
