"""The storage seam: one interface over RLDS (TFDS builder dirs) and LeRobot (v3.0 / v2.1) datasets.

    fmt = dataset_format(resolved)                       # "rlds" | "lerobot"
    idx = load_or_build_store(resolved, split)           # DatasetIndex | LeRobotIndex
    d = open_dataset_dir(path)                           # TFDSBuilderDir | LeRobotDir (metadata, .specs)
    path = statistics_cache_path(resolved, split)

Both index kinds give the datasets the same things and nothing format-specific:
    name, path, num_episodes, num_transitions, ep_len [E], ep_start [E+1], locate(j) -> (e, t),
    instructions [E], actions [N, D] (standardized), proprio [N, Pd], camera_keys, step_keys,
    has_step_key(k), episodes_lacking(k), undeclared, where(e) (the file to name in messages),
    read_frames(e, steps, cameras, handles) -> encoded bytes or decoded uint8 arrays per frame,
    read_step_feature(e, t, length, key, handles) -> [length, *shape] (past the end: last step repeated).
`handles` is the caller's per-process `latentvla.data.handles.Handles`.

Format: the registry entry's `format` when set, else `latentvla.data.registry.detect_format`.
"""

from __future__ import annotations

import os
from pathlib import Path

from latentvla.data.registry import FORMATS, ResolvedDataset, detect_format
from latentvla.errors import LatentVLAError


def dataset_format(resolved: ResolvedDataset) -> str:
    return resolved.entry.format or detect_format(resolved.path)


def open_dataset_dir(path: str | os.PathLike, fmt: str | None = None):
    """Metadata view of a dataset directory: `TFDSBuilderDir` or `LeRobotDir` (both have
    `split_names`, `num_episodes(split)` and `specs` {"steps/<key>": FeatureSpec})."""
    fmt = fmt or detect_format(path)
    if fmt == "lerobot":
        from latentvla.data.lerobot import LeRobotDir

        return LeRobotDir(path)
    from latentvla.data.tfds import TFDSBuilderDir

    return TFDSBuilderDir(path)


def load_or_build_store(resolved: ResolvedDataset, split: str = "train", progress: bool = True, sync: bool = True):
    fmt = dataset_format(resolved)
    if fmt == "lerobot":
        from latentvla.data.lerobot_index import load_or_build_lerobot_index

        return load_or_build_lerobot_index(resolved, split, progress=progress, sync=sync)
    if fmt != "rlds":
        raise LatentVLAError(f"dataset {resolved.name!r}: unknown format {fmt!r} (expected one of "
                             f"{', '.join(FORMATS)})")
    from latentvla.data.index import load_or_build_index

    return load_or_build_index(resolved, split, progress=progress, sync=sync)


def statistics_cache_path(resolved: ResolvedDataset, split: str) -> Path:
    """Where the statistics of (dataset, split) are cached (next to the index, same key)."""
    if dataset_format(resolved) == "lerobot":
        from latentvla.data.lerobot import LeRobotDir
        from latentvla.data.lerobot_index import lerobot_cache

        d = LeRobotDir(resolved.path)
        d.episode_indices(split)
        folder, key = lerobot_cache(resolved, d, split)
    else:
        from latentvla.data.index import open_split, rlds_cache

        folder, key = rlds_cache(resolved, open_split(resolved, split), split)
    return folder / f"statistics-{key}.json"
