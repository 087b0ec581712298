"""Frozen DINOv2-with-registers patch features for the image LAM.

`load_dino(path)` accepts
- a Hugging Face directory (`config.json` + weights) of `Dinov2WithRegistersModel`
  (`latentvla tiny-dino` writes one; `facebook/dinov2-with-registers-base` is one), or
- a file with the original (torch hub) layout: `dinov2_vitb14_reg4_pretrain.pth`, i.e. keys
  `cls_token, pos_embed, register_tokens, mask_token, patch_embed.proj.*, blocks.N.*, norm.*`
  (optionally under a prefix such as `dino_encoder.`, as in UniVLA's Lightning checkpoints).
  That layout does not store the head count; it is inferred as width // 64 (all DINOv2 models).

`DinoFeatures(frames)` takes float frames in [0, 1] `[N, 3, H, W]`, applies the ImageNet
normalization and returns the final-normed patch tokens `[N, (H/p)·(W/p), D]` (CLS and registers
dropped).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from latentvla.errors import LatentVLAError
from latentvla.lam.tiny_dino import IMAGENET_MEAN, IMAGENET_STD

_ORIGINAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_ORIGINAL_RENAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attn.proj.weight": "attention.o_proj.weight", "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}


class DinoFeatures(nn.Module):
    """A frozen `Dinov2WithRegistersModel` returning normalized patch tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self.hidden_size = int(cfg.hidden_size)
        self.patch_size = int(cfg.patch_size)
        self.num_register_tokens = int(cfg.num_register_tokens)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DinoFeatures:  # frozen: always in eval mode
        return super().train(False)

    def num_patches(self, image_size: int) -> int:
        return (image_size // self.patch_size) ** 2

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = (frames - self.mean.to(frames.dtype)) / self.std.to(frames.dtype)
        out = self.model(pixel_values=x).last_hidden_state  # [N, 1 + R + P, D], final layernorm applied
        return out[:, 1 + self.num_register_tokens:]


def is_original_dino_state_dict(sd: dict, prefix: str = "") -> bool:
    return f"{prefix}cls_token" in sd and f"{prefix}patch_embed.proj.weight" in sd


def original_to_hf(sd: dict, prefix: str = ""):
    """Convert an original-layout DINOv2-with-registers state dict to (hf_config, hf_state_dict)."""
    from transformers import Dinov2WithRegistersConfig

    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    try:
        dim = sd["cls_token"].shape[-1]
        patch = sd["patch_embed.proj.weight"].shape[-1]
        num_pos = sd["pos_embed"].shape[1] - 1
        registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    except KeyError as e:
        raise LatentVLAError(f"DINOv2 weights: missing key {prefix}{e.args[0]} (expected the "
                             "original layout)") from None
    side = int(round(num_pos ** 0.5))
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _ORIGINAL_BLOCK.match(k)))
    mlp_ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] // dim
    cfg = Dinov2WithRegistersConfig(
        hidden_size=dim, num_hidden_layers=layers, num_attention_heads=max(1, dim // 64), mlp_ratio=mlp_ratio,
        patch_size=patch, image_size=side * patch, num_register_tokens=registers, layerscale_value=1.0,
    )
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "embeddings.mask_token": sd.get("mask_token", torch.zeros(1, dim)).reshape(1, dim),
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    if registers:
        out["embeddings.register_tokens"] = sd["register_tokens"]
    for key, value in sd.items():
        m = _ORIGINAL_BLOCK.match(key)
        if not m:
            continue
        layer, rest = m.group(1), m.group(2)
        base = f"encoder.layer.{layer}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            q, k, v = value.chunk(3, dim=0)
            kind = rest.rsplit(".", 1)[1]
            out[base + f"attention.q_proj.{kind}"] = q
            out[base + f"attention.k_proj.{kind}"] = k
            out[base + f"attention.v_proj.{kind}"] = v
        elif rest in _ORIGINAL_RENAMES:
            out[base + _ORIGINAL_RENAMES[rest]] = value
        else:
            raise LatentVLAError(f"DINOv2 weights: unexpected key {prefix}{key} in the original layout")
    return cfg, out


def dino_from_original(sd: dict, prefix: str = "", source: str = "DINOv2 weights") -> DinoFeatures:
    from transformers import Dinov2WithRegistersModel

    cfg, hf_sd = original_to_hf(sd, prefix)
    model = Dinov2WithRegistersModel(cfg)
    missing, unexpected = model.load_state_dict(hf_sd, strict=False)
    if missing or unexpected:
        raise LatentVLAError(f"{source}: cannot map onto Dinov2WithRegistersModel (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
    return DinoFeatures(model.float())


def dino_from_config_dict(config: dict) -> DinoFeatures:
    """An uninitialised backbone of the given HF config (weights are loaded afterwards)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    return DinoFeatures(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**config)).float())


def load_dino(path: str | Path) -> DinoFeatures:
    """Load a frozen DINOv2-with-registers backbone from an HF directory or an original-layout file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LatentVLAError(f"--dino_path {path}: no config.json (expected a Dinov2WithRegistersModel directory)")
        import json

        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != "dinov2_with_registers":
            raise LatentVLAError(f"--dino_path {path}: config.json has model_type {model_type!r}, "
                                 "expected 'dinov2_with_registers' (DINOv2 with registers)")
        from transformers import Dinov2WithRegistersModel

        try:
            model = Dinov2WithRegistersModel.from_pretrained(path, dtype=torch.float32)
        except OSError as e:
            raise LatentVLAError(f"--dino_path {path}: cannot load weights ({e})") from None
        return DinoFeatures(model)
    if path.is_file():
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise LatentVLAError(f"--dino_path {path}: cannot read as a torch state dict ({e})") from None
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]
        prefix = next((k[: -len("cls_token")] for k in sd if k.endswith("cls_token")), None)
        if prefix is None or not is_original_dino_state_dict(sd, prefix):
            raise LatentVLAError(f"--dino_path {path}: not a DINOv2 state dict (no cls_token / "
                                 "patch_embed.proj.weight)")
        return dino_from_original(sd, prefix, source=f"--dino_path {path}")
    raise LatentVLAError(f"--dino_path {path}: not found (expected a Dinov2WithRegistersModel directory "
                         "or a .pth file)")
