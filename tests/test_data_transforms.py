"""Semantics of the image fast paths: fused crop+resize, composed colour matrix, seeded augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from latentvla.data.dataset import VLADataset
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.data.transforms import AugmentParams, decode_array, process_image, sample_augment_params

_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.uniform(60, 200, (h // 8 + 1, w // 8 + 1, 3))
    return np.kron(low, np.ones((8, 8, 1)))[:h, :w].astype(np.uint8)


def test_lanczos_fused_crop_resize_equals_crop_then_resize():
    img = _textured(64, 64)
    # a crop on whole pixels: resize(box=...) equals crop() then resize() except within the Lanczos support
    # (3 taps x scale 1.5 -> <= 3 output pixels) of the border, where the fused path also sees real pixels
    p = AugmentParams(crop=(0.125, 0.25, 0.875, 1.0))
    ref = np.asarray(Image.fromarray(img).crop((8, 16, 56, 64)).resize((32, 32), Image.LANCZOS))
    out = process_image(img, 32, p, resample="lanczos")
    assert np.array_equal(out[3:, 3:-3], ref[3:, 3:-3])  # the bottom edge is the image's: equal there too
    assert not np.array_equal(out[:3], ref[:3])  # the top border does see the rows above the crop
    # a sub-pixel crop stays close to the nearest whole-pixel crop
    q = AugmentParams(crop=(0.13, 0.251, 0.88, 1.0))
    assert np.abs(process_image(img, 32, q, resample="lanczos").astype(int) - ref).mean() < 6
    # no augmentation: a plain antialiased Lanczos resize of the whole frame (what inference uses)
    whole = np.asarray(Image.fromarray(img).resize((24, 24), Image.LANCZOS))
    assert np.array_equal(process_image(img, 24, None, resample="lanczos"), whole)


def test_default_resize_is_antialiased_bicubic_of_the_whole_pixel_crop():
    import torch
    import torch.nn.functional as F

    img = _textured(64, 64, seed=4)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()

    def ref(y0, y1, x0, x1, size):  # float reference of the same kernel: crop on whole pixels, then resize
        out = F.interpolate(t[:, :, y0:y1, x0:x1], size=(size, size), mode="bicubic", antialias=True)
        return out[0].permute(1, 2, 0).round().clamp(0, 255).numpy()

    # the sub-pixel crop box (0.13*64 = 8.32 ...) is rounded to whole pixels (8, 16, 56, 64)
    out = process_image(img, 32, AugmentParams(crop=(0.13, 0.251, 0.875, 1.0))).astype(float)
    assert np.abs(out - ref(16, 64, 8, 56, 32)).max() <= 1.0  # uint8 fixed-point kernel vs float: +-1
    whole = process_image(img, 24, None).astype(float)
    assert np.abs(whole - ref(0, 64, 0, 64, 24)).max() <= 1.0
    # close to PIL's antialiased bicubic, the kernel it mirrors
    pil = np.asarray(Image.fromarray(img).resize((24, 24), Image.BICUBIC)).astype(float)
    assert np.abs(whole - pil).max() <= 1.0


def test_jpeg_bytes_decoded_at_full_resolution():
    import io

    img = _textured(96, 80, seed=1)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    raw = decode_array(buf.getvalue())
    raw = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
    # >= 2x the target size: no DCT-domain shortcut, the same resize inference applies to raw frames
    for resample in ("bicubic", "lanczos"):
        assert np.array_equal(process_image(buf.getvalue(), 24, None, resample), process_image(raw, 24, None, resample))


def _colour_reference(x: np.ndarray, p: AugmentParams, mean: np.ndarray) -> np.ndarray:
    """Brightness -> contrast -> saturation -> hue applied one after the other in float64 (no clipping)."""
    y = x.astype(np.float64) + p.brightness * 255.0
    y = (y - (mean + p.brightness * 255.0)) * p.contrast + (mean + p.brightness * 255.0)
    grey = y @ np.array([0.299, 0.587, 0.114])
    y = grey[..., None] + p.saturation * (y - grey[..., None])
    yiq = y @ _RGB2YIQ.T
    th = 2 * math.pi * p.hue
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1], yiq[..., 2] = math.cos(th) * i - math.sin(th) * q, math.sin(th) * i + math.cos(th) * q
    return yiq @ np.linalg.inv(_RGB2YIQ).T


def test_colour_matrix_equals_sequential_ops():
    img = _textured(32, 32, seed=3)
    mean = img[::8, ::8].reshape(-1, 3).mean(0)  # the pivot process_image uses (strided sample of the crop)
    for p in (AugmentParams(brightness=0.1), AugmentParams(contrast=1.2), AugmentParams(saturation=0.8),
              AugmentParams(hue=0.05), AugmentParams(brightness=-0.15, contrast=0.85, saturation=1.15, hue=-0.03)):
        ref = _colour_reference(img, p, mean)
        inside = (ref > 0.5) & (ref < 254.5)
        for resample in ("bicubic", "lanczos"):
            out = process_image(img, 32, p, resample).astype(float)  # same size, full crop: colour only
            assert np.abs(out - ref)[inside].max() <= 1.0, (p, resample)
    # the hue turn keeps luma and rotates chroma by 2*pi*hue in the YIQ plane
    px = np.array([[[180, 90, 60]]], np.uint8)
    h = process_image(px, 1, AugmentParams(hue=0.05)).astype(float)[0, 0] @ _RGB2YIQ.T
    o = px[0, 0].astype(float) @ _RGB2YIQ.T
    assert abs(h[0] - o[0]) <= 1.0
    turn = math.atan2(h[2], h[1]) - math.atan2(o[2], o[1])
    assert abs(turn - 2 * math.pi * 0.05) < 0.03


def test_colour_jitter_same_with_and_without_opencv(monkeypatch):
    import latentvla.data.transforms as T

    img = _textured(32, 32, seed=5)
    p = AugmentParams(brightness=-0.1, contrast=1.15, saturation=0.9, hue=0.03)
    with_cv2 = process_image(img, 32, p).astype(int)
    monkeypatch.setattr(T, "_cv2_module", False)  # the PIL fallback (cv2 not installed)
    without = process_image(img, 32, p).astype(int)
    assert np.abs(with_cv2 - without).max() <= 1  # the two round differently, nothing else


def test_augment_param_distribution():
    ps = [sample_augment_params(np.random.default_rng(s)) for s in range(1000)]
    b = np.array([p.brightness for p in ps])
    c = np.array([p.contrast for p in ps])
    s = np.array([p.saturation for p in ps])
    h = np.array([p.hue for p in ps])
    crops = np.array([p.crop for p in ps])
    assert -0.2 <= b.min() < -0.18 and 0.18 < b.max() <= 0.2 and abs(b.mean()) < 0.02
    for v in (c, s):
        assert 0.8 <= v.min() < 0.82 and 1.18 < v.max() <= 1.2 and abs(v.mean() - 1) < 0.02
    assert -0.05 <= h.min() < -0.045 and 0.045 < h.max() <= 0.05
    w, hh = crops[:, 2] - crops[:, 0], crops[:, 3] - crops[:, 1]
    np.testing.assert_allclose(w * hh, 0.9)
    np.testing.assert_allclose(w, hh)  # aspect ratio 1
    assert crops.min() >= 0 and crops.max() <= 1
    assert abs(crops[:, 0].mean() - (1 - w[0]) / 2) < 0.005  # uniform offsets


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("aug")
    write_synthetic_dataset(path, "libero_goal_no_noops", num_episodes=2, steps=[6, 5], image_size=32)
    return path


def test_augmentation_seeded_by_seed_epoch_index(root):
    ds = VLADataset(root, "libero_goal", image_size=16, seed=3, progress=False)
    a = ds[4]["images"]
    assert np.array_equal(a, ds[4]["images"])
    assert not np.array_equal(a, VLADataset(root, "libero_goal", image_size=16, seed=4, progress=False)[4]["images"])
    ds.set_epoch(1)
    assert not np.array_equal(a, ds[4]["images"])
    ds.set_epoch(0)
    assert np.array_equal(a, ds[4]["images"])


def test_training_without_aug_matches_inference_resize(root):
    from latentvla.vla.policy_io import prepare_image as prepare_policy_image

    ds = VLADataset(root, "libero_goal", image_size=16, image_aug=False, progress=False)
    d, e, t = ds.locate(7)
    idx = ds.indexes[d]
    s, en = idx.image_spans[int(idx.ep_start[e]) + t, 0]
    raw = decode_array(ds._read(idx.shard_path(e), int(s), int(en)))
    raw = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
    assert np.array_equal(ds[7]["images"][0], prepare_policy_image(raw, 16, center_crop=False))
