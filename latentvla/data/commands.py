"""`latentvla data stats` and `latentvla data inspect`: JSON on stdout, one-line errors (exit 2)."""

from __future__ import annotations

import json
import sys

import numpy as np

from latentvla.data.configuration_data import DataInspectConfig, DataStatsConfig
from latentvla.data.index import feature_path, load_or_build_index
from latentvla.data.registry import parse_key_slice, resolve_data_mix
from latentvla.data.statistics import load_or_compute_statistics
from latentvla.data.tfds import TFDSBuilderDir, episode_key
from latentvla.data.transforms import ImageDecodeError, decode_image
from latentvla.errors import LatentVLAError


def _progress() -> bool:
    return sys.stderr.isatty()


def data_stats(cfg: DataStatsConfig) -> int:
    resolved = resolve_data_mix(cfg.data_root_dir, cfg.data_mix, cfg.dataset_registry)
    out = {}
    for r in resolved:
        s = load_or_compute_statistics(r, cfg.split, progress=_progress())
        out[r.name] = {"path": str(r.path), "platform": r.entry.platform_name, "weight": r.weight,
                       "num_trajectories": s["num_trajectories"], "num_transitions": s["num_transitions"],
                       "action": s["action"], "proprio": s["proprio"]}
    print(json.dumps(out, indent=2))
    return 0


def _episode_detail(r, builder: TFDSBuilderDir, k: int, split: str) -> dict:
    e = r.entry
    cams = [feature_path(builder, c, "camera", r.name) for c in e.image_keys]
    act = feature_path(builder, e.action_key, "action_key", r.name)
    prop = []
    for spec in e.proprio_keys:
        key, sl = parse_key_slice(spec, f"dataset {r.name!r}")
        prop.append((feature_path(builder, key, "proprio_keys", r.name), sl))
    ep = builder.read_episode(k, split, keys=[act, *{p for p, _ in prop}, *cams])
    proprio = np.concatenate([np.asarray(ep[episode_key(p)], np.float32).reshape(len(ep[episode_key(act)]), -1)[:, sl]
                              for p, sl in prop], 1) if prop else np.zeros((len(ep[episode_key(act)]), 0))
    shapes = {}
    for c in cams:
        seen = []
        for t, data in enumerate(ep[episode_key(c)]):
            try:
                shp = list(np.asarray(decode_image(data)).shape)
            except ImageDecodeError as err:
                raise LatentVLAError(f"dataset {r.name!r} ({builder.path}) episode {k} step {t} camera {episode_key(c)!r}: {err}") from None
            if shp not in seen:
                seen.append(shp)
        shapes[episode_key(c)] = seen[0] if len(seen) == 1 else seen
    return {"index": k, "length": int(len(ep[episode_key(act)])),
            "actions": np.asarray(ep[episode_key(act)], np.float64).round(6).tolist(),
            "proprio": proprio.astype(np.float64).round(6).tolist(), "image_shapes": shapes}


def data_inspect(cfg: DataInspectConfig) -> int:
    resolved = resolve_data_mix(cfg.data_root_dir, cfg.data_mix, cfg.dataset_registry)
    out = {}
    for r in resolved:
        builder = TFDSBuilderDir(r.path)
        idx = load_or_build_index(r, cfg.split, progress=_progress())
        info = {"path": str(r.path), "platform": r.entry.platform_name, "split": cfg.split,
                "num_episodes": idx.num_episodes, "num_transitions": idx.num_transitions,
                "cameras": idx.camera_keys,
                "episodes": [{"index": i, "length": int(n), "instruction": idx.instructions[i]} for i, n in enumerate(idx.ep_len)]}
        if cfg.episode is not None:
            if cfg.episode >= idx.num_episodes:
                raise LatentVLAError(f"--episode {cfg.episode}: dataset {r.name!r} has {idx.num_episodes} episodes in split {cfg.split!r}")
            info["episode"] = _episode_detail(r, builder, cfg.episode, cfg.split)
        out[r.name] = info
    print(json.dumps(out, indent=2))
    return 0
