"""Qwen3-VL image preprocessing (numpy + PIL, no torchvision).

Per image: smart-resize to multiples of patch_size * merge_size within [min_pixels, max_pixels]
(PIL bicubic, only when the size changes), rescale by 1/255 (float64 → float32), normalize with
mean/std, then cut into temporal_patch_size × patch_size × patch_size patches ordered so that
each merge_size × merge_size group of patches is contiguous (the layout the Qwen3-VL vision
tower expects). A still image is repeated over the temporal patch.
Output matches transformers' `Qwen2VLImageProcessorPil` bit for bit (tests/test_tiny_vlm.py).

The VLA feeds images already resized to `default_image_size` (a multiple of 32) and sets
`min_pixels = 1` so a 224² image stays 224² (14×14 patches → 49 tokens per image after the merge);
the real Qwen3-VL default `shortest_edge` (65536) would upscale it to 256².

`pixel_values_from_images` is the same computation in torch on a uint8 [N, H, W, 3] batch of
images that need no resize: the VLA collate ships uint8 images (1/8 of the float bytes, no
per-image numpy work in DataLoader workers) and the model patchifies them on its own device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    def from_pretrained(cls, path: str | Path, **overrides) -> QwenVLImageProcessor:
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

    factor = property(lambda self: self.patch_size * self.merge_size)

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        """(temporal, rows, columns) patch grid of one still image of this size (its `image_grid_thw` row)."""
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return 1, h // self.patch_size, w // self.patch_size

    def num_tokens(self, height: int, width: int) -> int:
        """LLM tokens of one image of this size (after the merge)."""
        _, gh, gw = self.grid_thw(height, width)
        return gh * gw // (self.merge_size ** 2)

    def keeps_size(self, height: int, width: int) -> bool:
        """True when an image of this size is patchified without a resize (what the torch path handles)."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels) == (height, width)

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

        patches, grids = zip(*(self.patchify(np.asarray(im)) for im in images), strict=True)
        return {
            "pixel_values": torch.from_numpy(np.concatenate(patches, axis=0)),
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),
        }

    # ------------------------------------------------------------------ torch, on the model's device
    def normalization_table(self, device=None, dtype=None):
        """[3, 256] (float32 by default): the normalized value of every uint8 level per channel, on `device`."""
        import torch

        return _normalization_table(self.rescale_factor, tuple(self.image_mean), tuple(self.image_std),
                                    str(torch.device(device or "cpu")), dtype or torch.float32)

    def _check_image_batch(self, images) -> None:
        import torch

        if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            what = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
            raise LatentVLAError(f"batch 'images': expected a uint8 tensor [N, H, W, 3], got {what}")
        h, w = images.shape[1:3]
        if not self.keeps_size(h, w):
            raise LatentVLAError(f"batch 'images' of size {h}x{w}: the torch path takes sizes that need no resize "
                                 f"(multiples of {self.factor} within min/max_pixels); use __call__ (pixel_values)")

    def pixel_values_from_images(self, images, dtype=None):
        """uint8 [N, H, W, 3] tensor (any device) -> pixel_values [N*gh*gw, 3*T*p*p] on that device.

        Equal to `__call__(list(images))["pixel_values"]` bit for bit in float32 (then cast to `dtype`),
        same patch order: image-major, then each merge group's patches contiguous.
        """
        import torch

        self._check_image_batch(images)
        n, h, w, c = images.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        # Reorder while still uint8 (1 byte per value), channel first so each channel reads its table row.
        # C,n,gh/m,gw/m,m,m,p,p
        planar = images.reshape(n, gh // m, m, p, gw // m, m, p, c).permute(7, 0, 1, 4, 2, 5, 3, 6)
        index = planar.reshape(c, -1).int()
        index += torch.arange(c, dtype=torch.int32, device=images.device).unsqueeze(1) * 256
        table = self.normalization_table(images.device, dtype)
        values = table.view(-1).index_select(0, index.view(-1))
        rows = n * gh * gw
        # Channel-major patch rows, a still image repeated over the temporal patch.
        values = values.view(c, rows, 1, p * p).permute(1, 0, 2, 3).expand(rows, c, t, p * p)
        return values.reshape(rows, c * t * p * p)


@functools.lru_cache(maxsize=32)
def _normalization_table(rescale_factor: float, mean: tuple, std: tuple, device: str, dtype):
    """Computed on CPU exactly as `patchify` does (level * rescale_factor in float64, cast to float32,
    then (x - mean) / std in float32), so a lookup in it gives patchify's bits on any device without
    float64 arithmetic there (MPS has none). Cached per device: a fresh host->GPU copy every forward
    would synchronize the stream."""
    import torch

    rescaled = (torch.arange(256, dtype=torch.float64) * rescale_factor).to(torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32).unsqueeze(1)
    std_t = torch.tensor(std, dtype=torch.float32).unsqueeze(1)
    return ((rescaled.unsqueeze(0) - mean_t) / std_t).to(device=device, dtype=dtype)
