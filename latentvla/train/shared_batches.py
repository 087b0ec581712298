"""Reusable shared-memory slots for the large tensors of DataLoader batches (images).

Without this, every batch a worker hands to the trainer lives in a fresh shared-memory segment:
torch allocates it, the worker page-faults every 4 KiB page of it (shmem gets no huge pages), and
the trainer unmaps it afterwards. For 32 LIBERO samples (2 x 224² uint8 images each, 9.6 MB)
that costs ~0.2-0.3 ms of CPU per sample, a fifth of what the sample itself costs to make
(docs/benchmarks.md). Here the large tensors go into a ring of slots allocated once, before the
workers start; the trainer copies a batch out of its slot (into ordinary memory, or pinned memory
when pin_memory is on) as it receives it.

Slot safety: batch k of an epoch uses slot k % num_slots. The DataLoader keeps at most
prefetch_factor x num_workers batches in flight and dispatches batch k + in_flight only when batch k
is handed over, so with num_slots >= in_flight + 2 a slot is never rewritten before the trainer has
copied it out (`SharedBatchRing.take`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

MIN_SHARED_BYTES = 1 << 16  # smaller tensors are cheaper to send the usual way


class SlotBatch(list):
    """The sample indices of one batch, then its samples, tagged with the ring slot its tensors go to."""

    def __init__(self, items, slot: int):
        super().__init__(items)
        self.slot = slot


class SlottedDataset(Dataset):
    """Passes a batch's slot from the batch sampler to the collate function (both run in the worker)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, batch) -> SlotBatch:
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(batch) if getitems else [self.dataset[i] for i in batch]
        return SlotBatch(samples, getattr(batch, "slot", -1))


class SharedBatchRing:
    """`num_slots` shared buffers for every large tensor of a dict batch shaped like `template`."""

    def __init__(self, template: dict, num_slots: int, min_bytes: int = MIN_SHARED_BYTES):
        self.num_slots = int(num_slots)
        self.buffers = {k: torch.empty((self.num_slots, *v.shape), dtype=v.dtype).share_memory_()
                        for k, v in template.items()
                        if torch.is_tensor(v) and v.device.type == "cpu" and v.nbytes >= min_bytes}

    def __bool__(self) -> bool:
        return bool(self.buffers)

    def collate_fn(self, inner: Callable | None) -> Callable:
        return _RingCollate(self.buffers, inner)

    def take(self, batch: Any) -> Any:
        """Copy the tensors that still live in a ring slot out of it (pinned copies already did)."""
        if not isinstance(batch, dict):
            return batch
        for k, buf in self.buffers.items():
            v = batch.get(k)
            if torch.is_tensor(v) and v.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr():
                batch[k] = v.clone()
        return batch


class _RingCollate:
    """Collate in the worker, with the large tensors written into the batch's slot.

    With the default collate, those keys are stacked straight into the slot (default_collate itself
    would put them in a fresh shared segment); a custom collate's output is copied into the slot.
    """

    def __init__(self, buffers: dict, inner: Callable | None):
        self.buffers, self.inner = buffers, inner

    def _fits(self, k: str, v: Any) -> bool:
        buf = self.buffers[k]
        return torch.is_tensor(v) and v.dtype == buf.dtype and tuple(v.shape) == tuple(buf.shape[1:])

    def __call__(self, samples) -> Any:
        slot = getattr(samples, "slot", -1)
        if self.inner is None:
            if slot < 0 or not samples or not isinstance(samples[0], dict):
                return default_collate(list(samples))
            direct = {}
            for k, buf in self.buffers.items():
                values = [s.get(k) for s in samples]
                parts = [torch.as_tensor(v) for v in values if v is not None]
                if len(parts) == len(samples) and all(p.dtype == buf.dtype for p in parts) \
                        and (len(parts), *parts[0].shape) == tuple(buf.shape[1:]):
                    direct[k] = torch.stack(parts, out=buf[slot])
            rest = default_collate([{k: v for k, v in s.items() if k not in direct} for s in samples])
            rest.update(direct)
            return rest
        batch = self.inner(list(samples))
        if slot >= 0 and isinstance(batch, dict):
            for k, buf in self.buffers.items():
                if k in batch and self._fits(k, batch[k]):
                    buf[slot].copy_(batch[k])
                    batch[k] = buf[slot]
        return batch
