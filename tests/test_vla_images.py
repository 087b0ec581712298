"""Images cross the DataLoader as uint8 and are patchified on the model's device: the torch path
equals the numpy `patchify` bit for bit, and the model gives the same outputs either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvla.data.transforms import process_image
from latentvla.errors import LatentVLAError
from latentvla.robots import get_platform
from latentvla.vla.configuration_vla import VLAConfig
from latentvla.vla.image_processor import QwenVLImageProcessor
from latentvla.vla.modeling_vla import LatentVLA

LIBERO = get_platform("libero")
CLIP_STATS = {"image_mean": (0.48145466, 0.4578275, 0.40821073), "image_std": (0.26862954, 0.26130258, 0.27577711)}


@pytest.fixture(scope="module")
def model(tiny_vlm_dir):
    torch.manual_seed(0)
    cfg = VLAConfig(vla_id="baseline", vlm_path=str(tiny_vlm_dir), default_image_size=64)
    return LatentVLA.from_config(cfg, LIBERO, device="cpu")


def libero_samples(n: int, size: int = 64, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"images": rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8), "instruction": f"put the bowl {i}",
             "proprio": rng.uniform(-1, 1, 8).astype(np.float32),
             "actions": rng.uniform(-1, 1, (8, 7)).astype(np.float32)}
            for i in range(n)]


def numpy_path(model, batch: dict) -> dict:
    """The same batch with pixel_values made the pre-uint8 way (numpy patchify per image)."""
    out = {k: v for k, v in batch.items() if k != "images"}
    out["pixel_values"] = model.processor.image_processor(list(batch["images"].numpy()))["pixel_values"]
    return out


@pytest.mark.parametrize("shape", [(64, 64), (224, 224), (64, 96), (160, 32)])
@pytest.mark.parametrize("stats", [{}, CLIP_STATS], ids=["qwen", "clip"])
def test_torch_pixel_values_equal_numpy_patchify_bit_for_bit(tiny_vlm_dir, shape, stats):
    proc = QwenVLImageProcessor.from_pretrained(tiny_vlm_dir, min_pixels=1, **stats)
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, (3, *shape, 3), dtype=np.uint8)
    images[0].reshape(-1)[:768] = np.repeat(np.arange(256), 3)  # every level in every channel
    ref = proc(list(images))["pixel_values"]
    ours = proc.pixel_values_from_images(torch.from_numpy(images))
    assert ours.dtype == torch.float32 and torch.equal(ours, ref)
    assert torch.equal(proc.pixel_values_from_images(torch.from_numpy(images), torch.bfloat16), ref.bfloat16())


def test_torch_path_rejects_what_it_cannot_patchify():
    proc = QwenVLImageProcessor(min_pixels=1)
    with pytest.raises(LatentVLAError, match="uint8 tensor"):
        proc.pixel_values_from_images(torch.zeros(1, 64, 64, 3))
    with pytest.raises(LatentVLAError, match="uint8 tensor"):
        proc.pixel_values_from_images(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(LatentVLAError, match="50x64.*need no resize"):
        proc.pixel_values_from_images(torch.zeros(1, 50, 64, 3, dtype=torch.uint8))


def test_collate_ships_uint8_images_in_sample_then_camera_order(model):
    samples = libero_samples(3)
    batch = model.processor.collate(samples)
    assert "pixel_values" not in batch
    images = batch["images"]
    assert images.dtype == torch.uint8 and images.shape == (6, 64, 64, 3)
    assert np.array_equal(images.numpy(), np.concatenate([s["images"] for s in samples]))
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 6
    assert torch.equal(numpy_path(model, batch)["pixel_values"],
                       model.processor.image_processor([im for s in samples for im in s["images"]])["pixel_values"])


def test_model_outputs_equal_with_images_or_numpy_pixel_values(model):
    batch = model.processor.collate(libero_samples(2))
    old = numpy_path(model, batch)
    model.eval()
    with torch.no_grad():
        new_out, old_out = model(batch), model(old)
    assert torch.equal(new_out["loss"], old_out["loss"]) and torch.equal(new_out["actions"], old_out["actions"])
    assert torch.equal(model.predict_actions(batch), model.predict_actions(old))


def test_batch_without_images_is_a_clear_error(model):
    batch = model.processor.collate(libero_samples(1))
    with pytest.raises(LatentVLAError, match="neither 'images' nor 'pixel_values'.*model.processor.collate"):
        model.predict_actions({k: v for k, v in batch.items() if k != "images"})
    with pytest.raises(LatentVLAError, match=r"'images' \(1, 64, 64, 3\) vs 2 image_grid_thw rows"):
        model.predict_actions({**batch, "images": batch["images"][:1]})
    with pytest.raises(LatentVLAError, match="uint8 tensor"):
        model.predict_actions({**batch, "images": batch["images"].float()})


def test_mixed_sizes_fall_back_to_pixel_values(model):
    proc = model.processor
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)]
    mixed = proc.vision_inputs(images)
    assert set(mixed) == {"pixel_values", "image_grid_thw"}
    assert mixed["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6]]
    resized = proc.vision_inputs([rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)])  # the processor would resize it
    assert set(resized) == {"pixel_values", "image_grid_thw"}


def test_raw_frames_use_the_processors_resample(model):
    frame = np.random.default_rng(2).integers(0, 256, (100, 80, 3), dtype=np.uint8)
    proc = model.processor
    assert proc.image_resample == "bicubic"
    assert np.array_equal(proc._images([frame, frame], "x")[0], process_image(frame, 64, resample="bicubic"))
    proc.image_resample = "lanczos"
    try:
        assert np.array_equal(proc._images([frame, frame], "x")[0], process_image(frame, 64, resample="lanczos"))
    finally:
        proc.image_resample = "bicubic"
