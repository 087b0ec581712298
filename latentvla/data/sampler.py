"""Global seeded sampling over all transitions of a data mix (docs/data.md, "Samples and sampling").

    sampler = GlobalSampler(dataset, seed=42, rank=0, world_size=1, epoch=0)
    loader = DataLoader(dataset, batch_size=B, sampler=sampler, num_workers=2)

One epoch = a seeded permutation of all transitions (no shuffle buffer). With mixture weights
w_d (relative sampling probability per transition), dataset d contributes
round(N * w_d N_d / sum_k w_k N_k) indices (N = all transitions), drawn as fresh permutations of its
transitions (repeated when it is up-weighted); equal weights give exactly one pass over every
transition. Every rank takes the disjoint slice `order[rank::world_size]` of the same order
(padded by wrapping so all ranks get the same count); DataLoader workers then read disjoint
parts of that slice.

Yielded indices are `SampleIndex` ints that also carry the epoch, so augmentation seeds
(seed, epoch, index) are right inside DataLoader workers without any epoch broadcast.

State: `state_dict()` = {epoch, position, seed, world_size}; `position` counts indices already
handed out in this epoch. Prefetching loaders run ahead of training, so trainers should save
`state_dict(consumed=<samples actually used this epoch>)`; `load_state_dict` resumes there.
`set_epoch(e)` starts epoch e from position 0; an exhausted epoch rolls to the next one on the
following `iter()`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from latentvla.errors import LatentVLAError
from latentvla.utils.seeding import derive_seed

try:
    from torch.utils.data import Sampler as _Base
except ImportError:  # pragma: no cover - torch is a core dependency
    _Base = object


class SampleIndex(int):
    """An int that remembers the epoch it was drawn in (picklable for DataLoader workers)."""

    epoch: int

    def __new__(cls, value: int, epoch: int = 0):
        obj = int.__new__(cls, value)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self):
        return (SampleIndex, (int(self), self.epoch))


def mixture_order(sizes: list[int], weights: list[float], seed: int, epoch: int) -> np.ndarray:
    """The global index order of one epoch (see module doc)."""
    sizes = [int(n) for n in sizes]
    total = sum(sizes)
    if total == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(derive_seed(seed, "global_sampler", epoch) % (2**63))
    w = np.asarray(weights, np.float64)
    n = np.asarray(sizes, np.float64)
    if np.allclose(w, w[0]):
        counts = np.asarray(sizes, np.int64)
    else:
        share = w * n / (w * n).sum()
        raw = share * total
        counts = np.floor(raw).astype(np.int64)
        rest = total - counts.sum()
        counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for d, c in enumerate(counts):
        if c == 0 or sizes[d] == 0:
            continue
        reps = -(-int(c) // sizes[d])
        perm = np.concatenate([rng.permutation(sizes[d]) for _ in range(reps)])[:c]
        parts.append(perm + starts[d])
    order = np.concatenate(parts)
    rng.shuffle(order)
    return order.astype(np.int64)


class GlobalSampler(_Base):
    def __init__(self, dataset, seed: int = 42, rank: int = 0, world_size: int = 1, epoch: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise LatentVLAError(f"GlobalSampler: rank {rank} / world_size {world_size} is invalid")
        self.sizes = list(getattr(dataset, "dataset_lengths", None) or [len(dataset)])
        self.weights = list(getattr(dataset, "dataset_weights", None) or [1.0] * len(self.sizes))
        if sum(self.sizes) == 0:
            raise LatentVLAError("GlobalSampler: the dataset has no transitions")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = int(epoch)
        self.position = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def rank_order(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            order = mixture_order(self.sizes, self.weights, self.seed, epoch)
            pad = (-len(order)) % self.world_size
            if pad:
                order = np.concatenate([order, order[:pad]])
            self._cache = (epoch, order[self.rank::self.world_size])
        return self._cache[1]

    def __len__(self) -> int:
        return -(-sum(self.sizes) // self.world_size)  # an epoch always has N indices

    def __iter__(self) -> Iterator[SampleIndex]:
        order = self.rank_order()
        if self.position >= len(order):
            self.set_epoch(self.epoch + 1)
            order = self.rank_order()
        epoch = self.epoch
        for i in order[self.position:]:
            self.position += 1
            yield SampleIndex(int(i), epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.position = 0

    def state_dict(self, consumed: int | None = None) -> dict:
        return {"epoch": self.epoch, "position": self.position if consumed is None else int(consumed),
                "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise LatentVLAError(f"GlobalSampler: resume state was made with seed {state['seed']}, this run "
                                 f"uses {self.seed}")
        if int(state.get("world_size", self.world_size)) != self.world_size:
            raise LatentVLAError(f"GlobalSampler: resume state was made with world_size {state['world_size']}, "
                                 f"this run has {self.world_size}; the stream position cannot be mapped")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
