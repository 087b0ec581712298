"""An endless, resumable stream of micro-batches over a per-rank sampler.

The position in the stream is (epoch, samples consumed in that epoch) counted at the consumer
(not the prefetching workers), so a checkpoint records exactly what training has seen; resuming
sets the sampler's epoch and skips that many indices of its (deterministic) order. Every rank
yields the same number of micro-batches per epoch (the smallest rank's), so collectives in DDP
and FSDP never wait on a rank that ran out of data.

The sampler needs `set_epoch(e)`, `__iter__` (deterministic for a given epoch) and `__len__`.
With DataLoader workers, the batches' large tensors travel through a ring of shared-memory slots
allocated once (`shared_batches.SharedBatchRing`), not a fresh shared segment per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from latentvla.train.shared_batches import SharedBatchRing, SlotBatch, SlottedDataset
from latentvla.utils.seeding import derive_seed

PREFETCH_FACTOR = 4


class MicroBatchStream:
    def __init__(self, dataset: Any, sampler: Any, batch_size: int, collate_fn: Callable | None,
                 batches_per_epoch: int, num_workers: int = 0, seed: int = 0, epoch: int = 0, position: int = 0,
                 pin_memory: bool = False, shared_ring: bool = True):
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.batches_per_epoch = batches_per_epoch
        self.num_workers = num_workers
        self.seed = seed
        self.epoch = epoch
        self.position = position  # samples of this epoch already handed out
        self.pin_memory = pin_memory
        self._it: Iterator | None = None
        self._ring: SharedBatchRing | None = None
        self._ring_tried = not shared_ring  # shared_ring=False: a fresh shared segment per batch (torch's default)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def _open_epoch(self) -> Iterator:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        order = list(iter(self.sampler))[: self.batches_per_epoch * self.batch_size]
        rest = order[self.position:]
        batches = [rest[i:i + self.batch_size] for i in range(0, len(rest) - self.batch_size + 1, self.batch_size)]
        dataset, collate_fn = self.dataset, self.collate_fn
        if self.num_workers and batches and not self._ring_tried:
            self._ring_tried = True
            self._ring = self._make_ring(batches[0])
        if self._ring is not None:
            batches = [SlotBatch(b, k % self._ring.num_slots) for k, b in enumerate(batches)]
            dataset, collate_fn = SlottedDataset(self.dataset), self._ring.collate_fn(self.collate_fn)
        # A private generator: worker seeding must not consume the global torch RNG (exact resume).
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "loader", self.epoch, self.position) % (2**63))
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn,
                            num_workers=self.num_workers, generator=gen, pin_memory=self.pin_memory,
                            persistent_workers=False, prefetch_factor=PREFETCH_FACTOR if self.num_workers else None)
        return iter(loader)

    def _make_ring(self, indices: list) -> SharedBatchRing | None:
        """Slots shaped like one batch, collated here once; enough that none is reused while in flight."""
        from torch.utils.data._utils.collate import default_collate

        template = (self.collate_fn or default_collate)([self.dataset[i] for i in indices])
        if not isinstance(template, dict):
            return None
        ring = SharedBatchRing(template, num_slots=PREFETCH_FACTOR * self.num_workers + 2)
        return ring if ring else None

    def __next__(self) -> Any:
        while True:
            if self._it is None:
                self._it = self._open_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.position = 0
                continue
            self.position += self.batch_size
            return self._ring.take(batch) if self._ring is not None else batch

    def __iter__(self) -> MicroBatchStream:
        return self

    def close(self) -> None:
        self._it = None
