"""`latentvla data stats|inspect` (JSON on stdout) and `latentvla data declare-latents`; one-line errors (exit 2)."""

from __future__ import annotations

import json
import sys

import numpy as np

from latentvla.data.configuration_data import DataDeclareLatentsConfig, DataInspectConfig, DataStatsConfig
from latentvla.data.index import rlds_layout
from latentvla.data.registry import resolve_data_mix
from latentvla.data.statistics import load_or_compute_statistics
from latentvla.data.store import dataset_format, load_or_build_store
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


def _episode_detail(r, k: int, split: str) -> dict:
    """Episode k's actions, proprio and camera image shapes (RLDS: of every frame; LeRobot: of frame 0)."""
    if dataset_format(r) == "lerobot":
        from latentvla.data.lerobot import LeRobotDir
        from latentvla.data.lerobot_index import lerobot_layout

        d = LeRobotDir(r.path)
        cams, act, prop = lerobot_layout(r.entry, d)
        ep = d.read_episode(k, split, keys=[act, *{p for p, _ in prop}])
    else:
        d = TFDSBuilderDir(r.path)
        cams, act, prop = rlds_layout(r.entry, d)
        ep = d.read_episode(k, split, keys=[act, *{p for p, _ in prop}, *cams])
    T = len(ep[episode_key(act)])
    proprio = np.concatenate([np.asarray(ep[episode_key(p)], np.float32).reshape(T, -1)[:, sl] for p, sl in prop], 1) \
        if prop else np.zeros((T, 0))
    shapes = {}
    for c in cams:
        if isinstance(d, TFDSBuilderDir):
            seen = []
            for t, data in enumerate(ep[episode_key(c)]):
                try:
                    shp = list(np.asarray(decode_image(data)).shape)
                except ImageDecodeError as err:
                    raise LatentVLAError(f"dataset {r.name!r} ({d.path}) episode {k} step {t} camera "
                                         f"{episode_key(c)!r}: {err}") from None
                if shp not in seen:
                    seen.append(shp)
            shapes[episode_key(c)] = seen[0] if len(seen) == 1 else seen
        else:
            shapes[c] = list(d.frames(k, [0], c, split)[0].shape) if T else []
    return {"index": k, "length": int(T), "actions": np.asarray(ep[episode_key(act)], np.float64).round(6).tolist(),
            "proprio": proprio.astype(np.float64).round(6).tolist(), "image_shapes": shapes}


def data_inspect(cfg: DataInspectConfig) -> int:
    resolved = resolve_data_mix(cfg.data_root_dir, cfg.data_mix, cfg.dataset_registry)
    out = {}
    for r in resolved:
        idx = load_or_build_store(r, cfg.split, progress=_progress())
        info = {"path": str(r.path), "platform": r.entry.platform_name, "split": cfg.split,
                "num_episodes": idx.num_episodes, "num_transitions": idx.num_transitions,
                "cameras": idx.camera_keys,
                "episodes": [{"index": i, "length": int(n), "instruction": idx.instructions[i]}
                             for i, n in enumerate(idx.ep_len)]}
        if cfg.episode is not None:
            if cfg.episode >= idx.num_episodes:
                raise LatentVLAError(f"--episode {cfg.episode}: dataset {r.name!r} has {idx.num_episodes} episodes in "
                                     f"split {cfg.split!r}")
            info["episode"] = _episode_detail(r, cfg.episode, cfg.split)
        out[r.name] = info
    print(json.dumps(out, indent=2))
    return 0


def data_declare_latents(cfg: DataDeclareLatentsConfig) -> int:
    """Write the declaration of undeclared latent labels into features.json (and dataset_info.json
    when that lists the features too), after checking the first record of every shard."""
    from latentvla.data.latent_labels import (
        LATENT_PATHS,
        declare_in_features,
        find_undeclared_latents,
        resolve_version_dir,
    )
    from latentvla.utils.atomic import atomic_write_text

    cfg.validate()
    path = resolve_version_dir(cfg.dataset_dir)
    builder = TFDSBuilderDir(path)
    found = find_undeclared_latents(builder, every_shard=True, num_codes=cfg.num_codes, latent_dim=cfg.latent_dim,
                                    codebook_size=cfg.codebook_size)
    if found is not None and found.problem:
        raise LatentVLAError(found.problem)
    if found is None or not found.specs:
        declared = [p for p in LATENT_PATHS if p in builder.specs]
        msg = f"{path}: nothing to declare: no shard's first record carries latent labels that features.json lacks"
        if declared:
            msg += f"; features.json already declares {', '.join(declared)}"
        if found is not None and found.others:
            msg += f"; undeclared keys that are not latent labels: {', '.join(found.others)} (declare those by hand)"
        elif not declared:
            msg += "; annotate the dataset with `latentvla lam annotate`"
        raise LatentVLAError(msg)
    features = declare_in_features(builder.features, found.specs)
    info = builder.info
    lists_features = isinstance(info.get("features"), dict) and ("featuresDict" in info["features"]
                                                                 or "type" in info["features"])
    if lists_features:  # some TFDS versions repeat the schema in dataset_info.json
        info = {**info, "features": declare_in_features(info["features"], found.specs)}
        atomic_write_text(path / "dataset_info.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    atomic_write_text(path / "features.json", json.dumps(features, indent=4, sort_keys=True))
    print(f"{path}: declared {found.shapes_text()} in "
          f"features.json{' and dataset_info.json' if lists_features else ''}; {found.sizes_text()}; checked the first "
          f"record of {len(found.checked)} shard(s)")
    if found.others:
        print(f"{path}: left undeclared (not latent labels): {', '.join(found.others)}")
    return 0
