"""Image decoding, resizing and seeded training augmentation (PIL + numpy; no torchvision).

    params = sample_augment_params(np.random.default_rng(derive_seed(seed, epoch, index)))
    img = process_image(jpeg_bytes, size=224, params=params)   # uint8 [224, 224, 3]

Resize: Lanczos (antialiased), straight from the decoded image to `size`. Training augmentation
(data.md §4), one draw shared by all cameras of a sample:
1. random-resized-crop, area 0.9, aspect ratio 1.0, uniform random offset — fused into the resize
   (PIL `resize(box=...)`), so the crop costs nothing extra and is resampled only once;
2. brightness +-0.2 (additive, in [0, 1] units), contrast 0.8-1.2 (around each channel's mean),
   saturation 0.8-1.2 (around the Rec.601 luma), hue +-0.05 turns (a rotation about the grey
   axis in YIQ space), in that order. The four are affine in RGB, so they are composed into one
   3x4 colour matrix applied by PIL in C with a single clip at the end (intermediate clipping,
   as in TF's per-op version, is skipped: a deliberate, documented difference).
The crop box is applied by the resampler, so output pixels within the filter support (~3 source
pixels) of the crop border also weigh real pixels just outside the crop (crop-then-resize would
clamp there); everywhere else the result equals crop-then-resize.
JPEG decoding uses simplejpeg when installed (faster), else PIL. `process_image` always decodes at
full resolution: JPEG DCT-domain downscaling (`decode_array(min_size=...)`) is not a Lanczos resize,
and inference resizes raw camera frames, so training must start from the same full-size pixels.
Undecodable bytes raise `ImageDecodeError` (a LatentVLAError); callers add context.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from latentvla.errors import LatentVLAError

try:  # optional fast path (extra `fast`)
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None

_LUMA = np.array([0.299, 0.587, 0.114])
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


class ImageDecodeError(LatentVLAError):
    pass


@dataclass(frozen=True)
class AugmentParams:
    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # relative box x0, y0, x1, y1
    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0

    @property
    def is_identity_color(self) -> bool:
        return self.brightness == 0.0 and self.contrast == 1.0 and self.saturation == 1.0 and self.hue == 0.0


def sample_augment_params(rng: np.random.Generator, crop_area: float = 0.9, crop_ratio: float = 1.0,
                          brightness: float = 0.2, contrast: tuple[float, float] = (0.8, 1.2),
                          saturation: tuple[float, float] = (0.8, 1.2), hue: float = 0.05) -> AugmentParams:
    w = min(1.0, math.sqrt(crop_area * crop_ratio))
    h = min(1.0, math.sqrt(crop_area / crop_ratio))
    x0 = float(rng.uniform(0.0, 1.0 - w))
    y0 = float(rng.uniform(0.0, 1.0 - h))
    return AugmentParams(
        crop=(x0, y0, x0 + w, y0 + h),
        brightness=float(rng.uniform(-brightness, brightness)),
        contrast=float(rng.uniform(*contrast)),
        saturation=float(rng.uniform(*saturation)),
        hue=float(rng.uniform(-hue, hue)),
    )


def center_crop_params(crop_area: float = 0.9) -> AugmentParams:
    """The deterministic counterpart of the training crop (for evaluation of aug-trained policies)."""
    s = math.sqrt(crop_area)
    o = (1.0 - s) / 2
    return AugmentParams(crop=(o, o, o + s, o + s))


def decode_array(data: bytes, min_size: int | None = None) -> np.ndarray | Image.Image:
    """Decode to a uint8 [H, W, 3] array (simplejpeg) or an RGB PIL image (other formats / no simplejpeg)."""
    try:
        if _simplejpeg is not None and data[:2] == b"\xff\xd8":
            kw = {}
            if min_size:
                h, w = _simplejpeg.decode_jpeg_header(data)[:2]
                if min(h, w) >= 2 * min_size:  # only then can the DCT scale; otherwise it just costs time
                    kw = {"min_height": min_size, "min_width": min_size}
            return _simplejpeg.decode_jpeg(data, colorspace="RGB", **kw)
        img = Image.open(io.BytesIO(data))
        if min_size and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        return img.convert("RGB")
    except Exception as e:  # corrupt / unknown bytes
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes, starts {bytes(data[:4]).hex()}): {e}") from None


def decode_image(data: bytes, min_size: int | None = None) -> Image.Image:
    """Encoded JPEG/PNG bytes -> RGB PIL image (DCT-downscaled when >= 2x min_size, never below it)."""
    out = decode_array(data, min_size)
    return Image.fromarray(out) if isinstance(out, np.ndarray) else out


def color_matrix(params: AugmentParams, channel_mean: np.ndarray) -> tuple[float, ...]:
    """The 3x4 affine RGB matrix (pixel units) of brightness -> contrast -> saturation -> hue."""
    b = params.brightness * 255.0
    c = params.contrast
    m1 = np.asarray(channel_mean, np.float64) + b  # channel means after brightness
    A = c * np.eye(3)
    k = c * b + (1.0 - c) * m1  # x2 = c x + k
    S = params.saturation * np.eye(3) + (1.0 - params.saturation) * np.outer(np.ones(3), _LUMA)
    th = params.hue * 2.0 * math.pi
    R = np.array([[1, 0, 0], [0, math.cos(th), -math.sin(th)], [0, math.sin(th), math.cos(th)]])
    H = _YIQ2RGB @ R @ _RGB2YIQ
    M = H @ S @ A
    off = H @ S @ k
    return tuple(float(v) for row in np.concatenate([M, off[:, None]], 1) for v in row)


RESAMPLE_CHOICES = ("lanczos", "bicubic", "bilinear")


def _resize_torch(arr: np.ndarray, box: tuple[int, int, int, int], size: int, mode: str) -> np.ndarray:
    """Antialiased bicubic/bilinear resize of an integer crop with torch's uint8 channels-last kernels."""
    import torch
    import torch.nn.functional as F

    x0, y0, x1, y1 = box
    t = torch.from_numpy(arr).permute(2, 0, 1)[None, :, y0:y1, x0:x1].contiguous(memory_format=torch.channels_last)
    out = F.interpolate(t, size=(size, size), mode=mode, antialias=True)
    return out[0].permute(1, 2, 0).numpy()


def process_image(image: bytes | np.ndarray | Image.Image, size: int, params: AugmentParams | None = None,
                  resample: str = "lanczos") -> np.ndarray:
    """Decode (if bytes), crop + resize to size x size, colour-jitter; uint8 [S, S, 3].

    `resample`: "lanczos" (default; PIL, sub-pixel crop box) or "bicubic" / "bilinear" (antialiased, torch
    uint8 kernels, integer crop box; several times faster). Use the same choice at inference.
    """
    if resample not in RESAMPLE_CHOICES:
        raise LatentVLAError(f"resample must be one of {', '.join(RESAMPLE_CHOICES)}, got {resample!r}")
    if isinstance(image, (bytes, bytearray, memoryview)):
        src = decode_array(bytes(image))  # full resolution: see the module docstring
    elif isinstance(image, np.ndarray):
        src = np.asarray(image, np.uint8)
    else:
        src = image.convert("RGB")
    W, H = src.size if isinstance(src, Image.Image) else (src.shape[1], src.shape[0])
    box = (0.0, 0.0, float(W), float(H))
    if params is not None and params.crop != (0.0, 0.0, 1.0, 1.0):
        x0, y0, x1, y1 = params.crop
        box = (x0 * W, y0 * H, x1 * W, y1 * H)
    need_color = params is not None and not params.is_identity_color
    resize = box != (0.0, 0.0, float(W), float(H)) or (W, H) != (size, size)
    if resample == "lanczos":
        img = src if isinstance(src, Image.Image) else Image.fromarray(src)
        if need_color:  # contrast pivots on the crop's channel means; a strided subsample is plenty
            a = np.asarray(img)
            mean = a[int(box[1]):int(math.ceil(box[3])):8, int(box[0]):int(math.ceil(box[2])):8].reshape(-1, 3).mean(0)
        if resize:
            img = img.resize((size, size), Image.LANCZOS, box=box)
    else:
        arr = np.asarray(src, np.uint8)
        ib = tuple(int(round(v)) for v in box)
        if need_color:
            mean = arr[ib[1]:ib[3]:8, ib[0]:ib[2]:8].reshape(-1, 3).mean(0)
        out = _resize_torch(arr, ib, size, resample) if resize else arr
        if not need_color:
            return np.ascontiguousarray(out)
        img = Image.fromarray(np.ascontiguousarray(out))
    if need_color:
        img = img.convert("RGB", color_matrix(params, mean))
    return np.asarray(img, dtype=np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Lanczos (antialiased) resize of a uint8 [H, W, 3] image to [size, size, 3]."""
    return process_image(image, size, None)
