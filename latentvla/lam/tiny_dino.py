"""`latentvla tiny-dino OUT_DIR`: a tiny random DINOv2-with-registers in the Hugging Face layout.

The directory loads with `transformers.Dinov2WithRegistersModel.from_pretrained(OUT_DIR)` and with
our `latentvla.lam.dino.load_dino(OUT_DIR)`, exactly like `facebook/dinov2-with-registers-base`.
"""

from __future__ import annotations

from pathlib import Path

from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_tiny_dino import TinyDinoConfig
from latentvla.utils.atomic import atomic_directory, atomic_write_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocessor_config(image_size: int) -> dict:
    """The image processor config of the public DINOv2 checkpoints (BitImageProcessor)."""
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_convert_rgb": True,
    }


def write_tiny_dino(cfg: TinyDinoConfig) -> Path:
    import torch
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg.validate()
    out = Path(cfg.out_dir)
    if out.exists() and not cfg.overwrite:
        raise LatentVLAError(f"tiny-dino: {out} already exists (pass --overwrite to replace it)")
    hf_cfg = Dinov2WithRegistersConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
        num_register_tokens=cfg.num_register_tokens,
        layerscale_value=1.0,
    )
    torch.manual_seed(cfg.seed)
    model = Dinov2WithRegistersModel(hf_cfg).eval()
    with atomic_directory(out, overwrite=cfg.overwrite) as tmp:
        model.save_pretrained(tmp)
        atomic_write_json(tmp / "preprocessor_config.json", preprocessor_config(cfg.image_size))
    print(f"wrote tiny DINOv2-with-registers ({cfg.hidden_size}d x {cfg.num_layers} layers, "
          f"patch {cfg.patch_size}, {cfg.num_register_tokens} registers) to {out}")
    return out
