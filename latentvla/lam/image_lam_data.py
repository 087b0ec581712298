"""Frame-pair data for `lam image-train`: dataset + resumable batch stream.

`open_frame_pairs(cfg)` returns `latentvla.data.dataset.FramePairDataset` (samples
`{"frames": uint8 [2, S, S, 3], "actions": float32 [k, D], "instruction": str}`) with an
`action_dim` attribute. `FramePairStream` yields endless batches over seeded per-epoch
permutations (`GlobalSampler` when available), disjoint per rank; `consumed` (samples taken by
this rank) is checkpointed so a resumed run continues the same stream.

`_FramePairAdapter` is a small stand-in (clearly an adapter) used only when the data package does
not provide `FramePairDataset`; it reads episodes through `TFDSBuilderDir` and normalizes actions
with per-dataset q01/q99 bounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from latentvla.errors import LatentVLAError


def open_frame_pairs(cfg):
    try:
        from latentvla.data.dataset import FramePairDataset
    except ImportError:
        FramePairDataset = None
    if FramePairDataset is not None:
        ds = FramePairDataset(cfg.data_root_dir, cfg.data_mix, image_size=cfg.image_size, train=True,
                              image_aug=cfg.image_aug, seed=cfg.seed, dataset_registry=cfg.dataset_registry,
                              pair_offset=cfg.pair_offset)
    else:
        ds = _FramePairAdapter(cfg.data_root_dir, cfg.data_mix, image_size=cfg.image_size,
                               pair_offset=cfg.pair_offset, dataset_registry=cfg.dataset_registry)
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
        try:
            from latentvla.data.sampler import GlobalSampler
        except ImportError:
            GlobalSampler = None
        self.sampler = GlobalSampler(dataset, seed=seed, rank=rank, world_size=world_size) if GlobalSampler else None

    def _order(self, epoch: int) -> list[int]:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return [int(i) for i in iter(self.sampler)]
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return perm[self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import DataLoader

        epoch_len = len(self._order(0))
        if epoch_len < self.batch_size:
            raise LatentVLAError(f"the data mix has {epoch_len} transitions per process, fewer than --batch_size {self.batch_size}")
        while True:
            epoch, skip = divmod(self.consumed, epoch_len)
            order = self._order(epoch)[skip:]
            n = len(order) // self.batch_size * self.batch_size  # whole batches; the tail starts the next epoch
            if n == 0:
                self.consumed = (epoch + 1) * epoch_len
                continue
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order[:n], num_workers=self.num_workers,
                                collate_fn=collate_pairs, drop_last=True)
            for batch in loader:
                self.consumed += self.batch_size
                yield batch
            self.consumed = (epoch + 1) * epoch_len


class _FramePairAdapter:
    """ADAPTER (until `latentvla.data.dataset.FramePairDataset` exists): frame pairs via TFDSBuilderDir."""

    def __init__(self, data_root_dir: str, data_mix: str, *, image_size: int, pair_offset: int,
                 dataset_registry: str | None = None):
        from latentvla.data.tfds import TFDSBuilderDir

        self.image_size, self.k = image_size, pair_offset
        self.sources = []  # (builder, image_key, action_key, lo, hi)
        self.index: list[tuple[int, int, int]] = []
        for path, image_key, action_key in _resolve(data_root_dir, data_mix, dataset_registry):
            b = TFDSBuilderDir(path)
            acts = [np.asarray(ep[action_key], np.float32) for ep in b.iter_episodes(keys=[action_key])]
            allacts = np.concatenate(acts) if acts else np.zeros((0, 1), np.float32)
            lo, hi = np.quantile(allacts, 0.01, axis=0), np.quantile(allacts, 0.99, axis=0)
            s = len(self.sources)
            self.sources.append((b, image_key, action_key, lo, hi))
            for e, a in enumerate(acts):
                self.index += [(s, e, t) for t in range(len(a))]
        self.action_dim = int(self.sources[0][3].shape[-1]) if self.sources else 0
        self._cache: tuple | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        from latentvla.lam.latent_labeler import decode_frame

        s, e, t = self.index[i]
        b, image_key, action_key, lo, hi = self.sources[s]
        if self._cache is None or self._cache[0] != (s, e):
            self._cache = ((s, e), b.read_episode(e, keys=[image_key, action_key, "language_instruction"]))
        ep = self._cache[1]
        imgs, acts = ep[image_key], np.asarray(ep[action_key], np.float32)
        T = len(imgs)
        t2 = min(t + self.k, T - 1)
        chunk = acts[np.minimum(np.arange(t, t + self.k), T - 1)]
        norm = np.clip(2 * (chunk - lo) / (hi - lo + 1e-8) - 1, -1, 1)
        norm = np.where(hi - lo == 0, 0.0, norm).astype(np.float32)
        frames = np.stack([decode_frame(imgs[t], self.image_size), decode_frame(imgs[t2], self.image_size)])
        return {"frames": frames, "actions": norm, "instruction": str(ep.get("language_instruction", [""] * T)[t]).strip().lower()}


def _resolve(data_root_dir: str, data_mix: str, registry: str | None) -> list[tuple[Path, str, str]]:
    try:
        from latentvla.data.registry import resolve_data_mix
    except ImportError:
        resolve_data_mix = None
    if resolve_data_mix is not None:
        out = []
        for r in resolve_data_mix(data_root_dir, data_mix, registry):
            key = r.entry.image_keys[0]
            key = key if "/" in key else f"observation/{key}"
            out.append((r.path, key, r.entry.action_key))
        return out
    names = json.loads(data_mix) if data_mix.strip().startswith("[") else [data_mix]
    out = []
    for name in names:
        versions = sorted((Path(data_root_dir) / name).glob("*/dataset_info.json"))
        if not versions:
            raise LatentVLAError(f"--data_mix {name}: no {Path(data_root_dir) / name}/<version>/dataset_info.json")
        out.append((versions[-1].parent, "observation/image", "action"))
    return out
