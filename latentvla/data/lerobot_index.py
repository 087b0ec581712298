"""Random-access index of a LeRobot dataset for one registry entry and split, built once and cached.

The LeRobot counterpart of `latentvla.data.index.DatasetIndex`, with the same fields the datasets
use (ep_len, ep_start, instructions, standardized actions, proprio, camera_keys, step_keys) and
the same reading methods (`read_frames`, `read_step_feature`, `where`):
- per transition and camera: the mp4 (file id), the frame's pts and the pts of the keyframe to seek
  to, found once by nearest timestamp (so a bad video or timestamp fails at indexing, not mid-run);
- other numeric per-step features (e.g. `latent_idx`, `latent_z`): arrays saved beside the index
  and memory-mapped.

Registry keys map to LeRobot feature names by trying, in order, the key itself (`/` read as `.`),
`observation.images.<key>` and `observation.<key>`; so the LIBERO entry's `image`, `wrist_image` and
`state[:6]` find `observation.images.image`, ... and `observation.state`. The language key
(`language_instruction`) falls back to the episode's task. Cache as for RLDS:
`<dir>/.latentvla_cache/` when writable, else `$LATENTVLA_CACHE_DIR`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from latentvla.data.index import (
    IndexBase,
    cache_dir,
    cache_key,
    check_finite,
    entry_layout,
    episode_starts,
    load_or_build_cached,
    standardize_actions,
)
from latentvla.data.lerobot import DEFAULT_KEYS, LeRobotDir, column_values, read_parquet
from latentvla.data.registry import ResolvedDataset
from latentvla.errors import LatentVLAError

INDEX_FORMAT = 1


def lerobot_cache(resolved: ResolvedDataset, d: LeRobotDir, split: str) -> tuple[Path, str]:
    """(cache directory, key) of (dataset, split), as `latentvla.data.index.rlds_cache`."""
    files = []
    for sub in ("meta", "data", "videos"):
        for p in sorted((d.path / sub).rglob("*")):
            if p.is_file():
                st = p.stat()
                files.append([str(p.relative_to(d.path)), st.st_size, st.st_mtime_ns])
    return cache_dir(d.path, f"{d.name}-lerobot"), cache_key(resolved, split, files, INDEX_FORMAT)


def feature_name(d: LeRobotDir, key: str, what: str, name: str) -> str:
    """The LeRobot feature a registry key names (see the module doc)."""
    dotted = key.replace("/", ".")
    tried = list(dict.fromkeys((key, dotted) if dotted.startswith("observation.") else
                               (key, dotted, f"observation.images.{dotted}", f"observation.{dotted}")))
    for cand in tried:
        if cand in d.features:
            return cand
    raise LatentVLAError(f"{d.info_path}: dataset {name!r} has no feature {key!r} ({what} in the registry entry; "
                         f"tried {', '.join(map(repr, tried))}); features: {', '.join(d.features)}")


def lerobot_layout(entry, d: LeRobotDir) -> tuple[list[str], str, list[tuple[str, slice]]]:
    """`latentvla.data.index.entry_layout` of a registry entry in a LeRobot directory (feature names)."""
    return entry_layout(entry, str(d.info_path), lambda k, what: feature_name(d, k, what, entry.name),
                        lambda f: d.features[f].get("shape") or [])


@dataclass
class LeRobotIndex(IndexBase):
    video_files: list[str]  # relative to path
    frame_file: np.ndarray  # int32 [N, C] into video_files
    frame_pts: np.ndarray  # int64 [N, C]
    seek_pts: np.ndarray  # int64 [N, C] keyframe at or before frame_pts
    step_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # key -> [N, *shape]
    episode_indices: list[int] = field(default_factory=list)  # LeRobot episode_index of each position

    format = "lerobot"
    _META = ("name", "split", "instructions", "camera_keys", "video_files", "step_keys", "episode_indices")
    _ARRAYS = ("ep_len", "ep_start", "actions", "proprio", "frame_file", "frame_pts", "seek_pts")

    def episodes_lacking(self, key: str) -> np.ndarray:
        return np.zeros(0, np.int64)  # a parquet column covers every row (nulls are refused at indexing)

    def where(self, e: int) -> str:
        return f"{self.path}, episode_index {self.episode_indices[e] if self.episode_indices else e}"

    # ------------------------------------------------------------------ reading
    def read_frames(self, e: int, steps, cameras, handles) -> list[np.ndarray]:
        s = int(self.ep_start[e])
        out = []
        for t, c in zip(steps, cameras, strict=False):
            row = s + int(t)
            dec = handles.video(self.path / self.video_files[int(self.frame_file[row, c])])
            out.append(dec.frame(int(self.frame_pts[row, c]), int(self.seek_pts[row, c])))
        return out

    def read_step_feature(self, e: int, t: int, length: int, key: str, handles) -> np.ndarray:
        s, T = int(self.ep_start[e]), int(self.ep_len[e])
        rows = s + np.minimum(np.arange(t, t + length), T - 1)
        return np.asarray(self.step_arrays[key][rows])

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        from latentvla.utils.atomic import atomic_path

        for k, arr in self.step_arrays.items():  # large (latent_z): memory-mapped on load
            with atomic_path(_step_path(path, k)) as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(arr))
        super().save(path)

    @classmethod
    def load(cls, path: Path, root: Path) -> LeRobotIndex:
        idx = super().load(path, root)
        idx.step_arrays = {k: np.load(_step_path(path, k), mmap_mode="r", allow_pickle=False) for k in idx.step_keys}
        return idx


def _step_path(index_path: Path, key: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in key)
    return index_path.with_name(f"{index_path.stem}-{safe}.npy")


def check_row_count(d: LeRobotDir) -> None:
    """The data parquet files hold `total_frames` rows (info.json)."""
    files = sorted({d.data_file(int(m["episode_index"])) for m in d.episodes})
    rows = sum(read_parquet(f, metadata_only=True).metadata.num_rows for f in files)
    total = d.info.get("total_frames")
    if total is not None and rows != int(total):
        raise LatentVLAError(f"{d.info_path}: total_frames is {total} but the {len(files)} data parquet file(s) hold "
                             f"{rows} rows")


def build_lerobot_index(resolved: ResolvedDataset, d: LeRobotDir, split: str, progress: bool) -> LeRobotIndex:
    e, plat, name = resolved.entry, resolved.entry.platform, resolved.entry.name
    cams, act, prop = lerobot_layout(e, d)
    for k, c in zip(e.image_keys, cams, strict=True):
        if d.features[c].get("dtype") != "video":
            raise LatentVLAError(f"{d.info_path}: feature {c!r} (camera {k!r}) has dtype "
                                 f"{d.features[c].get('dtype')!r}; cameras must be video features")
    lang = e.language_key if e.language_key in d.features else None  # else: the episode's task
    used = {act, *cams, *(p for p, _ in prop), *DEFAULT_KEYS, *([lang] if lang else [])}
    other = [k for k, f in d.features.items() if k not in used and f.get("dtype") not in ("video", "image", "string")]
    check_row_count(d)

    eps = d.episode_indices(split)
    if not eps:
        raise LatentVLAError(f"{d.path}: dataset {name!r} split {split!r} is empty (0 episodes)")
    lens, instr, actions, proprio = [], [], [], []
    video_files: dict[str, int] = {}
    ffile, fpts, fseek = [], [], []
    steps: dict[str, list] = {k: [] for k in other}
    for i, ep in enumerate(tqdm(eps, desc=f"indexing {name} ({split})", unit="ep", disable=not progress,
                                leave=False)):
        t = d.step_table(i, split)
        where = f"{d.data_file(ep)} (episode_index {ep})"
        T = t.num_rows
        a = column_values(t, act, [plat.action_dim], "float32", where)
        check_finite(a, f"action column {act!r}", where)
        parts = [column_values(t, f, d.features[f].get("shape") or [1], "float32", where).reshape(T, -1)[:, sl]
                 for f, sl in prop]
        pr = np.concatenate(parts, 1) if parts else np.zeros((T, 0), np.float32)
        check_finite(pr, f"proprio {list(e.proprio_keys)}", where)
        ts = column_values(t, "timestamp", [1], "float64", where)
        row_files, row_pts, row_seek = [], [], []
        for c in cams:
            vpath, pts, seek = d.frame_positions(ep, c, ts)
            rel = str(vpath.relative_to(d.path))
            row_files.append(np.full(T, video_files.setdefault(rel, len(video_files)), np.int32))
            row_pts.append(pts)
            row_seek.append(seek)
        for k in other:
            v = column_values(t, k, d.features[k].get("shape") or [1], str(d.features[k].get("dtype")), where)
            if v.dtype.kind == "f":
                check_finite(v, f"column {k!r}", where)
            steps[k].append(v)
        if lang:
            instr.append(str(t.column(lang)[0].as_py()) if T else "")
        else:
            instr.append(d.read_episode(i, split, keys=[])["task"])
        lens.append(T)
        actions.append(standardize_actions(a, e.action_standardization))
        proprio.append(pr.astype(np.float32))
        ffile.append(np.stack(row_files, 1) if cams else np.zeros((T, 0), np.int32))
        fpts.append(np.stack(row_pts, 1) if cams else np.zeros((T, 0), np.int64))
        fseek.append(np.stack(row_seek, 1) if cams else np.zeros((T, 0), np.int64))
    ep_len, ep_start = episode_starts(lens, d.path, name, split)
    return LeRobotIndex(
        name=name, path=d.path, split=split, ep_len=ep_len, ep_start=ep_start, instructions=instr,
        actions=np.concatenate(actions), proprio=np.concatenate(proprio), camera_keys=cams,
        video_files=list(video_files), frame_file=np.concatenate(ffile), frame_pts=np.concatenate(fpts),
        seek_pts=np.concatenate(fseek), step_keys=other, step_arrays={k: np.concatenate(v) for k, v in steps.items()},
        episode_indices=eps)


def load_or_build_lerobot_index(resolved: ResolvedDataset, split: str = "train", progress: bool = True,
                                sync: bool = True) -> LeRobotIndex:
    """The cached index (built on first use); under torch.distributed rank 0 builds first, as for RLDS."""
    d = LeRobotDir(resolved.path)
    d.episode_indices(split)  # unknown split -> a clear error before anything is built
    folder, key = lerobot_cache(resolved, d, split)
    path = folder / f"index-{key}.npz"
    return load_or_build_cached(path, lambda: LeRobotIndex.load(path, d.path),
                                lambda rank0: build_lerobot_index(resolved, d, split, progress and rank0), sync)
