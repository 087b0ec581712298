"""Image decoding, resizing and seeded training augmentation (numpy + torch uint8 kernels; no torchvision).

    params = sample_augment_params(np.random.default_rng(derive_seed(seed, epoch, index)))
    img = process_image(jpeg_bytes, size=224, params=params)   # uint8 [224, 224, 3]

Resize (`resample`, recorded in every checkpoint so inference resizes exactly as training did):
- "bicubic" (default): antialiased bicubic (a = -0.5, PIL's kernel) with torch's uint8 channels-last
  kernel, integer crop box; ~0.14 ms per 256² -> 224² image.
- "bilinear": the same kernel family, antialiased bilinear.
- "lanczos": PIL's antialiased Lanczos-3 with a sub-pixel crop box — the reference TF pipeline's
  resize, kept for checkpoints trained that way; ~1.2 ms per image (PIL's scalar C), 5x a
  JPEG decode, so it cannot meet the loader's throughput target (docs/benchmarks.md).
For a 256² -> 224² downscale the three differ by a few grey levels on edges only.

Training augmentation (docs/architecture.md §3), one draw shared by all cameras of a sample:
1. random-resized-crop, area 0.9, aspect ratio 1.0, uniform random offset — fused into the resize
   (the crop box is given to the resampler), so the crop is resampled only once;
2. brightness +-0.2 (additive, in [0, 1] units), contrast 0.8-1.2 (around each channel's mean),
   saturation 0.8-1.2 (around the Rec.601 luma), hue +-0.05 turns (a rotation about the grey
   axis in YIQ space), in that order. The four are affine in RGB, so they are composed into one
   3x4 colour matrix applied in one pass with a single clip at the end (intermediate clipping,
   as in TF's per-op version, is skipped: a deliberate, documented difference). OpenCV's
   `transform` applies it when cv2 is importable (0.02 ms per image), else PIL's matrix `convert`
   (0.18 ms); the two round differently (at most 1 grey level). Jitter is training-only.
The Lanczos crop box is applied by the resampler, so output pixels within the filter support (~3 source
pixels) of the crop border also weigh real pixels just outside the crop (crop-then-resize would
clamp there); everywhere else the result equals crop-then-resize.
JPEG decoding uses simplejpeg when installed (faster), else PIL. `process_image` always decodes at
full resolution: JPEG DCT-domain downscaling (`decode_array(min_size=...)`) is a different resize,
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
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes, starts "
                               f"{bytes(data[:4]).hex()}): {e}") from None


def decode_image(data: bytes, min_size: int | None = None) -> Image.Image:
    """Encoded JPEG/PNG bytes -> RGB PIL image (DCT-downscaled when >= 2x min_size, never below it)."""
    out = decode_array(data, min_size)
    return Image.fromarray(out) if isinstance(out, np.ndarray) else out


class ColorJitter:
    """Brightness -> contrast -> saturation -> hue of one augmentation draw, as x -> M x + HS k.

    The 3x3 algebra is done once per draw (it costs more than applying the matrix); only the
    offset depends on each image's channel means (the contrast pivot).
    """

    def __init__(self, params: AugmentParams):
        c, sat, th = params.contrast, params.saturation, params.hue * 2.0 * math.pi
        S = sat * np.eye(3) + (1.0 - sat) * np.outer(np.ones(3), _LUMA)
        R = np.array([[1, 0, 0], [0, math.cos(th), -math.sin(th)], [0, math.sin(th), math.cos(th)]])
        self.HS = _YIQ2RGB @ R @ _RGB2YIQ @ S
        self.b, self.c = params.brightness * 255.0, c
        self._m = np.empty((3, 4))
        self._m[:, :3] = c * self.HS

    def matrix(self, channel_mean: np.ndarray) -> np.ndarray:
        """The 3x4 affine RGB matrix (pixel units) for an image with these channel means."""
        b, c = self.b, self.c
        # contrast: x2 = c x + k with k = c b + (1 - c) m1, m1 = the channel means after brightness
        self._m[:, 3] = self.HS @ (c * b + (1.0 - c) * (np.asarray(channel_mean, np.float64) + b))
        return self._m

    def apply(self, arr: np.ndarray, channel_mean: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """On a uint8 HxWx3 image, one final clip (OpenCV when installed, else PIL)."""
        m = self.matrix(channel_mean)
        arr = np.ascontiguousarray(arr, np.uint8)
        cv2 = _cv2()
        if cv2:
            return cv2.transform(arr, m.astype(np.float32), dst=out)
        res = np.asarray(Image.fromarray(arr).convert("RGB", tuple(m.ravel().tolist())), dtype=np.uint8)
        if out is not None:
            out[...] = res
            return out
        return res


def color_matrix(params: AugmentParams, channel_mean: np.ndarray) -> tuple[float, ...]:
    """The 3x4 affine RGB matrix (pixel units) of brightness -> contrast -> saturation -> hue."""
    return tuple(ColorJitter(params).matrix(channel_mean).ravel().tolist())


RESAMPLE_CHOICES = ("bicubic", "bilinear", "lanczos")
DEFAULT_RESAMPLE = "bicubic"
LEGACY_RESAMPLE = "lanczos"  # what checkpoints without an `image_resample` record were trained with
_cv2_module: object = None  # None: not tried yet; False: not installed


def _cv2():
    """OpenCV, imported on first use (keeps `import latentvla` light); False when not installed."""
    global _cv2_module
    if _cv2_module is None:
        try:
            import cv2

            _cv2_module = cv2
        except ImportError:
            _cv2_module = False
    return _cv2_module


def check_resample(resample: str, where: str = "resample") -> str:
    if resample not in RESAMPLE_CHOICES:
        raise LatentVLAError(f"{where} must be one of {', '.join(RESAMPLE_CHOICES)}, got {resample!r}")
    return resample


def apply_color(arr: np.ndarray, params: AugmentParams, channel_mean: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
    """Brightness -> contrast -> saturation -> hue as one 3x4 matrix on a uint8 HxWx3 image (one final clip)."""
    return ColorJitter(params).apply(arr, channel_mean, out)


def _source(frame, k: int) -> np.ndarray | Image.Image:
    """One input frame -> decoded pixels; a decode failure names the frame's position (`.frame`)."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        try:
            return decode_array(bytes(frame))  # full resolution: see the module docstring
        except ImageDecodeError as e:
            e.frame = k
            raise
    if isinstance(frame, np.ndarray):
        return np.asarray(frame, np.uint8)
    return frame.convert("RGB")


def _crop_box(params: AugmentParams | None, W: int, H: int) -> tuple[float, float, float, float]:
    if params is None or params.crop == (0.0, 0.0, 1.0, 1.0):
        return (0.0, 0.0, float(W), float(H))
    x0, y0, x1, y1 = params.crop
    return (x0 * W, y0 * H, x1 * W, y1 * H)


def _crop_means(a: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Channel means of a crop, from every 8th pixel each way: contrast's pivot (a subsample is plenty)."""
    sub = a[y0:y1:8, x0:x1:8].reshape(-1, 3)
    return sub.sum(0, dtype=np.uint32) / len(sub)


def _lanczos_frame(src, size: int, params: AugmentParams | None) -> np.ndarray:
    img = src if isinstance(src, Image.Image) else Image.fromarray(src)
    W, H = img.size
    box = _crop_box(params, W, H)
    out = np.asarray(img.resize((size, size), Image.LANCZOS, box=box) if box != (0, 0, W, H) or (W, H) != (size, size)
                     else img, dtype=np.uint8)
    if params is None or params.is_identity_color:
        return np.ascontiguousarray(out)
    mean = _crop_means(np.asarray(img), int(box[0]), int(box[1]), int(math.ceil(box[2])), int(math.ceil(box[3])))
    return apply_color(out, params, mean)


def process_frames(frames, size: int, params: AugmentParams | None = None,
                   resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Several frames with one augmentation draw (a sample's cameras, a LAM frame pair) -> uint8 [N, S, S, 3].

    Equal to stacking `process_image` per frame; frames of one size are cropped and resized in one
    torch call. A frame that cannot be decoded raises `ImageDecodeError` with `.frame` = its position.
    """
    import torch
    import torch.nn.functional as F

    check_resample(resample)
    srcs = [_source(f, k) for k, f in enumerate(frames)]
    if not srcs:
        raise LatentVLAError("process_frames: no frames")
    if resample == "lanczos":
        return np.stack([_lanczos_frame(src, size, params) for src in srcs])
    arrays = [np.asarray(src, np.uint8) for src in srcs]
    if len({a.shape for a in arrays}) > 1:
        return np.stack([process_frames([a], size, params, resample)[0] for a in arrays])
    H, W = arrays[0].shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in _crop_box(params, W, H))
    # torch.from_numpy warns on read-only arrays (PIL-decoded, user frames) and refuses negative strides
    # (flipped views); the stack copies anyway
    arrays = [a if a.flags.writeable and min(a.strides) >= 0 else np.array(a, order="C") for a in arrays]
    crops = torch.stack([torch.from_numpy(a)[y0:y1, x0:x1] for a in arrays])
    if (x1 - x0, y1 - y0) != (size, size):  # [N, h, w, 3] contiguous = channels-last [N, 3, h, w]
        crops = F.interpolate(crops.permute(0, 3, 1, 2), size=(size, size), mode=resample,
                              antialias=True).permute(0, 2, 3, 1)
    out = np.ascontiguousarray(crops.numpy())  # channels-last output memory: already NHWC-contiguous (no copy)
    if params is not None and not params.is_identity_color:
        jitter = ColorJitter(params)
        for a, o in zip(arrays, out, strict=True):
            jitter.apply(o, _crop_means(a, x0, y0, x1, y1), out=o)
    return out


def process_image(image: bytes | np.ndarray | Image.Image, size: int, params: AugmentParams | None = None,
                  resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Decode (if bytes), crop + resize to size x size, colour-jitter; uint8 [S, S, 3].

    `resample`: "bicubic" (default) / "bilinear" (antialiased, torch uint8 kernels, integer crop box)
    or "lanczos" (PIL, sub-pixel crop box; the reference pipeline's, ~8x slower). Inference must use
    the training run's choice (checkpoints record it as `image_resample`).
    """
    return process_frames([image], size, params, resample)[0]


def resize_image(image: np.ndarray, size: int, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Antialiased resize of a uint8 [H, W, 3] image to [size, size, 3] (no crop, no jitter)."""
    return process_image(image, size, None, resample)
