"""Batches through DataLoader workers and the shared-memory slot ring equal the in-process ones."""

from __future__ import annotations

import numpy as np
import torch

from latentvla.data.dataset import VLADataset
from latentvla.data.sampler import GlobalSampler
from latentvla.train.data_stream import MicroBatchStream
from latentvla.train.shared_batches import SharedBatchRing


def _stream(ds, workers: int, collate=None, batches_per_epoch: int = 7, position: int = 0) -> MicroBatchStream:
    return MicroBatchStream(ds, GlobalSampler(ds, seed=3), batch_size=4, collate_fn=collate,
                            batches_per_epoch=batches_per_epoch, num_workers=workers, seed=3, position=position)


def _stacking_collate(samples):  # a custom collate (like the VLA processor's): a dict of fresh tensors
    return {"images": torch.from_numpy(np.stack([s["images"] for s in samples])),
            "actions": torch.from_numpy(np.stack([s["actions"] for s in samples])),
            "step": [s["step"] for s in samples]}


def test_worker_batches_through_the_ring_equal_in_process_batches(vla_data_root):
    # 64² x 2 cameras x 4 samples = 98 KB of images per batch: above the ring threshold; augmentation on
    ds = VLADataset(vla_data_root, "libero_goal", image_size=64, seed=3, progress=False)
    for collate in (None, _stacking_collate):
        # 7 batches per epoch x 3 epochs = 21 batches > the 10 slots of 2 workers: slots are reused
        ref, got = _stream(ds, 0, collate), _stream(ds, 2, collate)
        for _ in range(21):
            a, b = next(ref), next(got)
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["actions"], b["actions"])
            assert [int(x) for x in a["step"]] == [int(x) for x in b["step"]]
            ring = got._ring
            assert ring is not None and ring.num_slots == 10 and "images" in ring.buffers
            slots = ring.buffers["images"].untyped_storage().data_ptr()
            assert b["images"].untyped_storage().data_ptr() != slots  # the trainer owns its copy
        assert (got.epoch, got.position) == (2, 28)  # the third epoch, all 7 batches of 4 consumed
        got.close()


def test_resumed_worker_stream_continues_the_same_order(vla_data_root):
    ds = VLADataset(vla_data_root, "libero_goal", image_size=64, seed=3, progress=False)
    ref = _stream(ds, 0)
    for _ in range(3):
        next(ref)
    resumed = _stream(ds, 2, position=12)
    for _ in range(6):
        assert torch.equal(next(ref)["images"], next(resumed)["images"])


def test_ring_keeps_only_large_tensors():
    template = {"images": torch.zeros(4, 2, 64, 64, 3, dtype=torch.uint8), "proprio": torch.zeros(4, 8),
                "instruction": ["a"] * 4}
    ring = SharedBatchRing(template, num_slots=3)
    assert set(ring.buffers) == {"images"} and ring.buffers["images"].shape == (3, 4, 2, 64, 64, 3)
    assert ring.buffers["images"].is_shared()
    assert not SharedBatchRing({"proprio": torch.zeros(4, 8)}, num_slots=3)  # nothing worth a ring
