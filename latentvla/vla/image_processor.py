"""Qwen3-VL image preprocessing (numpy + PIL, no torchvision).

Per image: smart-resize to multiples of patch_size * merge_size within [min_pixels, max_pixels]
(PIL bicubic, only when the size changes), rescale by 1/255 (float64 → float32), normalize with
mean/std, then cut into temporal_patch_size × patch_size × patch_size patches ordered so that
each merge_size × merge_size group of patches is contiguous (the layout the Qwen3-VL vision
tower expects). A still image is repeated over the temporal patch.
Output matches transformers' `Qwen2VLImageProcessorPil` bit for bit (tests/test_tiny_vlm.py).

The VLA feeds images already resized to `default_image_size` (a multiple of 32) and sets
`min_pixels = 1` so a 224² image stays 224² (14×14 patches → 49 tokens), as method.md §1 says;
the real Qwen3-VL default `shortest_edge` (65536) would upscale it to 256².
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from latentvla.errors import LatentVLAError
from latentvla.utils.json_files import read_json


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Closest (h, w) with both divisible by `factor`, area in [min_pixels, max_pixels], aspect kept."""
    if min(height, width) < 1 or max(height, width) / min(height, width) > 200:
        raise LatentVLAError(f"image of size {height}x{width}: aspect ratio must be below 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass
class QwenVLImageProcessor:
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    min_pixels: int = 65536
    max_pixels: int = 16777216
    rescale_factor: float = 1 / 255

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> "QwenVLImageProcessor":
        f = Path(path) / "preprocessor_config.json"
        if not f.is_file():
            raise LatentVLAError(f"{f}: not found (a Qwen3-VL checkpoint directory has a preprocessor_config.json)")
        d = read_json(f)
        size = d.get("size") or {}
        kw = dict(
            patch_size=int(d.get("patch_size", 16)),
            temporal_patch_size=int(d.get("temporal_patch_size", 2)),
            merge_size=int(d.get("merge_size", 2)),
            image_mean=tuple(float(x) for x in d.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(float(x) for x in d.get("image_std", (0.5, 0.5, 0.5))),
            min_pixels=int(size.get("shortest_edge", d.get("min_pixels", 65536))),
            max_pixels=int(size.get("longest_edge", d.get("max_pixels", 16777216))),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
        )
        kw.update(overrides)
        return cls(**kw)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def num_tokens(self, height: int, width: int) -> int:
        """LLM tokens of one image of this size (after the merge)."""
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size ** 2)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        nh, nw = smart_resize(h, w, self.factor, self.min_pixels, self.max_pixels)
        if (nh, nw) == (h, w):
            return image
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((nw, nh), resample=Image.BICUBIC))

    def patchify(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One uint8 HxWx3 image -> (patches [gh*gw, 3*T*p*p] float32, (1, gh, gw))."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise LatentVLAError(f"image: expected uint8 HxWx3, got {image.dtype} {tuple(image.shape)}")
        image = self._resize(image)
        x = (image.astype(np.float64) * self.rescale_factor).astype(np.float32)
        x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        x = np.ascontiguousarray(x.transpose(2, 0, 1))  # C, H, W
        c, h, w = x.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = x.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)  # gh/m, gw/m, m, m, C, p, p
        x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
        return x.reshape(gh * gw, c * t * p * p), (1, gh, gw)

    def __call__(self, images: Sequence[np.ndarray]) -> dict:
        """List of uint8 HxWx3 images -> {"pixel_values": float32 tensor, "image_grid_thw": int64 tensor}."""
        import torch

        patches, grids = zip(*(self.patchify(np.asarray(im)) for im in images))
        return {
            "pixel_values": torch.from_numpy(np.concatenate(patches, axis=0)),
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),
        }
