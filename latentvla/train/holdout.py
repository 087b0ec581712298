"""Held-out episodes for `--use_val`: validation never sees frames of training episodes.

When every dataset of the mix has a `val` split, that split is the validation set. Otherwise a
seeded `val_fraction` of each dataset's episodes (at least one, never all) is held out of the
`train` split: `EpisodeSubset` views of the same `VLADataset` expose the kept transitions with
the per-dataset lengths `GlobalSampler` needs (mixture weights unchanged). Statistics stay those
of the whole train split (they only set the normalization bounds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from latentvla.data.sampler import SampleIndex
from latentvla.errors import LatentVLAError
from latentvla.utils.seeding import derive_seed


class EpisodeSubset(Dataset):
    """The transitions of `base` (a VLADataset) whose (dataset, episode) is selected."""

    def __init__(self, base: Any, episodes: list[np.ndarray]):
        self.base = base
        ids, lengths = [], []
        for d, (idx, eps) in enumerate(zip(base.indexes, episodes, strict=False)):
            start = int(base._starts[d])
            parts = [np.arange(idx.ep_start[e], idx.ep_start[e + 1], dtype=np.int64) + start for e in sorted(eps)]
            ids.append(np.concatenate(parts) if parts else np.zeros(0, np.int64))
            lengths.append(int(sum(len(p) for p in parts)))
        self.ids = np.concatenate(ids)
        self.dataset_lengths = lengths
        self.dataset_weights = list(base.dataset_weights)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        orig = int(self.ids[int(i)])
        epoch = getattr(i, "epoch", None)
        return self.base[SampleIndex(orig, epoch) if epoch is not None else orig]

    def __getattr__(self, name: str):  # platform, statistics, chunk_len, ...
        if name in ("base", "ids"):
            raise AttributeError(name)
        return getattr(self.base, name)


def split_episodes(base: Any, fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train episodes, held-out episodes) per dataset of the mix."""
    train, val = [], []
    for d, idx in enumerate(base.indexes):
        n = idx.num_episodes
        if n < 2:
            raise LatentVLAError(f"--use_val: dataset {base.resolved[d].name!r} has {n} episode(s) and no 'val' split; "
                                 "holding out episodes needs at least 2")
        k = min(n - 1, max(1, int(round(fraction * n))))
        perm = np.random.default_rng(derive_seed(seed, "holdout", base.resolved[d].name) % (2**63)).permutation(n)
        val.append(np.sort(perm[:k]))
        train.append(np.sort(perm[k:]))
    return train, val


def has_val_split(base: Any) -> bool:
    from latentvla.data.store import dataset_format, open_dataset_dir

    return all("val" in open_dataset_dir(r.path, dataset_format(r)).split_names for r in base.resolved)
