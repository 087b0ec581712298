"""Per-dataset action/proprio statistics (docs/data.md, "Statistics and the index"), computed once and cached.

    stats = load_or_compute_statistics(resolved)          # one ResolvedDataset -> stats dict
    all_stats = load_or_compute_statistics(resolved_list) # list -> {dataset_name: stats}

stats = {"action": {"mean", "std", "min", "max", "q01", "q99", "mask"}, "proprio": {...same},
         "num_transitions": int, "num_trajectories": int}
Values are per-dim lists of floats (JSON-able), computed over the train split after
standardization (e.g. LIBERO gripper -> 1 open / 0 close) and before normalization; quantiles are
numpy's linear ones over every transition (for LeRobot too: computed from the parquet rows, not
taken from lerobot's stats.json, whose quantiles are averages of per-episode ones); `mask` is the
platform's normalization mask. The statistics pass reads only the action and proprio keys (it is
the index pass of `latentvla.data.store`; images are never decoded). Cached as
`statistics-<key>.json` next to the index (same key: files + registry entry).
`dataset_statistics.json` in run dirs / checkpoints is `{dataset_name: stats}`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from latentvla.data.registry import ResolvedDataset
from latentvla.data.store import load_or_build_store, statistics_cache_path
from latentvla.errors import LatentVLAError
from latentvla.utils.atomic import atomic_write_json

STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99", "mask")


def array_statistics(x: np.ndarray, mask) -> dict[str, list]:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError("expected [N, D]")
    D = x.shape[1]
    if len(x) == 0:
        z = [0.0] * D
        return {"mean": z, "std": z, "min": z, "max": z, "q01": z, "q99": z, "mask": [bool(m) for m in mask]}
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
        "mask": [bool(m) for m in mask],
    }


def statistics_from_index(index, platform) -> dict:
    return {
        "action": array_statistics(index.actions, platform.action_norm_mask),
        "proprio": array_statistics(index.proprio, platform.proprio_norm_mask),
        "num_transitions": int(index.num_transitions),
        "num_trajectories": int(index.num_episodes),
    }


def _one(resolved: ResolvedDataset, split: str, progress: bool) -> dict:
    path = statistics_cache_path(resolved, split)
    if path.is_file():
        try:
            stats = json.loads(path.read_text())
            if all(k in stats for k in ("action", "proprio", "num_transitions", "num_trajectories")):
                return stats
        except (OSError, json.JSONDecodeError):
            pass  # damaged cache: recompute
    # No barrier here: whether the statistics cache hits can differ between ranks.
    index = load_or_build_store(resolved, split, progress=progress, sync=False)
    stats = statistics_from_index(index, resolved.entry.platform)
    try:
        atomic_write_json(path, stats)
    except OSError:
        pass
    return stats


def load_or_compute_statistics(resolved: ResolvedDataset | Sequence[ResolvedDataset], split: str = "train",
                               progress: bool = True) -> dict:
    """Statistics of one dataset, or {name: stats} for a list (see module doc)."""
    if isinstance(resolved, ResolvedDataset):
        return _one(resolved, split, progress)
    return {r.name: _one(r, split, progress) for r in resolved}


def check_statistics(stats: dict, platform, name: str, source: str = "statistics") -> None:
    """Fail clearly when statistics do not fit the platform (e.g. a checkpoint for another robot)."""
    for key, dim in (("action", platform.action_dim), ("proprio", platform.proprio_dim)):
        block = stats.get(key)
        if not isinstance(block, dict) or any(k not in block for k in STAT_KEYS[:-1]):
            raise LatentVLAError(f"{source}: dataset {name!r} lacks {key} statistics ({', '.join(STAT_KEYS)})")
        if len(block["mean"]) != dim:
            raise LatentVLAError(f"{source}: dataset {name!r} {key} statistics have {len(block['mean'])} dims, "
                                 f"platform {platform.name!r} expects {dim}")
