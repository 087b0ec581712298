"""Frame-pair data for `lam image-train`: dataset + resumable batch stream.

`open_frame_pairs(cfg)` returns `latentvla.data.dataset.FramePairDataset` (samples
`{"frames": uint8 [2, S, S, 3], "actions": float32 [k, D], "instruction": str}`) with an
`action_dim` attribute. `FramePairStream` yields endless batches over the seeded per-epoch
permutations of `GlobalSampler` (mixture-weighted), disjoint per rank; `consumed` (samples taken by
this rank) is checkpointed so a resumed run continues the same stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from latentvla.errors import LatentVLAError


def open_frame_pairs(cfg):
    from latentvla.data.dataset import FramePairDataset

    ds = FramePairDataset(cfg.data_root_dir, cfg.data_mix, image_size=cfg.image_size, train=True,
                          image_aug=cfg.image_aug, seed=cfg.seed, dataset_registry=cfg.dataset_registry,
                          pair_offset=cfg.pair_offset, resample=cfg.image_resample)
    if len(ds) == 0:
        raise LatentVLAError(f"--data_mix {cfg.data_mix}: no transitions to train on")
    if not hasattr(ds, "action_dim"):
        ds.action_dim = int(np.asarray(ds[0]["actions"]).shape[-1])
    return ds


def collate_pairs(samples: Sequence[dict]) -> dict:
    return {
        "frames": torch.from_numpy(np.stack([np.asarray(s["frames"], np.uint8) for s in samples])),
        "actions": torch.from_numpy(np.stack([np.asarray(s["actions"], np.float32) for s in samples])),
        "instruction": [str(s.get("instruction", "")) for s in samples],
    }


class FramePairStream:
    def __init__(self, dataset, seed: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, consumed: int = 0):
        self.dataset, self.seed, self.batch_size = dataset, seed, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.consumed = consumed
        from latentvla.data.sampler import GlobalSampler

        self.sampler = GlobalSampler(dataset, seed=seed, rank=rank, world_size=world_size)

    def _order(self, epoch: int) -> list[int]:
        """This rank's indices of `epoch` (`SampleIndex` ints carrying the epoch for augmentation seeds)."""
        self.sampler.set_epoch(epoch)
        return list(iter(self.sampler))

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import DataLoader

        epoch_len = len(self._order(0))
        if epoch_len < self.batch_size:
            raise LatentVLAError(f"the data mix has {epoch_len} transitions per process, fewer than --batch_size "
                                 f"{self.batch_size}")
        while True:
            epoch, skip = divmod(self.consumed, epoch_len)
            order = self._order(epoch)[skip:]
            n = len(order) // self.batch_size * self.batch_size  # whole batches; the tail starts the next epoch
            if n == 0:
                self.consumed = (epoch + 1) * epoch_len
                continue
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order[:n],
                                num_workers=self.num_workers, collate_fn=collate_pairs, drop_last=True)
            for batch in loader:
                self.consumed += self.batch_size
                yield batch
            self.consumed = (epoch + 1) * epoch_len
