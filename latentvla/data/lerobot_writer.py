"""Write LeRobot v3.0 datasets (the layout `lerobot` 0.4 writes and loads), with pyarrow and PyAV only.

    features = {"observation.images.image": {"dtype": "video", "shape": [256, 256, 3], "names": [...]},
                "observation.state": {"dtype": "float32", "shape": [8], "names": None},
                "action": {"dtype": "float32", "shape": [7], "names": None}}
    with LeRobotWriter(out_dir, features, fps=10, robot_type="panda") as w:
        w.add_episode({"observation.images.image": uint8 [T, H, W, 3], "observation.state": [T, 8],
                       "action": [T, 7]}, task="put the bowl on the plate")

Layout written (see `docs/lerobot.md`): `meta/info.json`, `meta/tasks.parquet` (task string as the
pandas index column `__index_level_0__`), `meta/episodes/chunk-000/file-000.parquet` (one row per
episode: data/video file indexes, `dataset_from_index`/`dataset_to_index`,
`videos/<key>/from_timestamp`/`to_timestamp`, per-episode `stats/<feature>/<stat>`),
`meta/stats.json`, `data/chunk-CCC/file-FFF.parquet` (one row group per episode) and
`videos/<key>/chunk-CCC/file-FFF.mp4` (episodes back to back). lerobot's own columns `timestamp`
(float32 = frame_index / fps), `frame_index`, `episode_index`, `index`, `task_index` (int64) are
added. Each episode's video is encoded on its own (AV1 via libsvtav1 by default, or H.264;
yuv420p, GOP 2, as lerobot does) and appended to the camera's file by stream copy, so keyframes
restart at each episode's first frame. Files roll over at `data_files_size_in_mb` /
`video_files_size_in_mb`; `chunks_size` files per chunk directory.

Column convention and statistics: `latentvla.data.lerobot_columns`. The dataset is built in a
hidden temp dir and renamed into place by `close()`; nothing partial is ever visible.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentvla.data.lerobot import DEFAULT_KEYS
from latentvla.data.lerobot_columns import (
    aggregate_image_stats,
    arrow_column,
    arrow_type,
    check_features,
    hf_feature,
    image_stats,
    numeric_stats,
    stats_array,
)
from latentvla.data.staging import StagedDirWriter
from latentvla.data.video import CODECS, VideoFile, encode_episode_video
from latentvla.errors import LatentVLAError

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"


class LeRobotWriter(StagedDirWriter):
    """Write a LeRobot v3.0 dataset directory; see the module doc."""

    def __init__(self, out_dir: str | os.PathLike, features: Mapping[str, Mapping], fps: int, *,
                 robot_type: str | None = None, vcodec: str = "libsvtav1", crf: int = 30, gop: int = 2,
                 overwrite: bool = False, data_files_size_in_mb: int = 100, video_files_size_in_mb: int = 200,
                 chunks_size: int = 1000):
        if vcodec not in CODECS:
            raise LatentVLAError(f"LeRobotWriter: vcodec {vcodec!r} not supported; choose one of {', '.join(CODECS)}")
        if int(fps) < 1:
            raise LatentVLAError(f"LeRobotWriter: fps must be a positive integer, got {fps}")
        self.features = check_features(features)
        self.fps, self.robot_type, self.vcodec, self.crf, self.gop = int(fps), robot_type, vcodec, crf, gop
        self.data_mb, self.video_mb, self.chunks_size = data_files_size_in_mb, video_files_size_in_mb, chunks_size
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self._stage(out_dir, overwrite)
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.num_frames = 0
        self._values: dict[str, list[np.ndarray]] = {k: [] for k, f in self.features.items() if f["dtype"] != "video"}
        self._values.update({k: [] for k in DEFAULT_KEYS})
        self._image_stats: dict[str, list[dict]] = {k: [] for k in self.video_keys}
        self._data = None  # (ParquetWriter, chunk, file, bytes)
        self._data_pos = (0, 0)
        self._videos: dict[str, tuple[VideoFile, int, int]] = {}
        self._video_pos = {k: (0, 0) for k in self.video_keys}
        self.splits: dict[str, str] | None = None  # {split: "start:end"} episode ranges; default all "train"

    # -------------------------------------------------------------- files
    def _next(self, pos: tuple[int, int]) -> tuple[int, int]:
        c, f = pos
        return (c, f + 1) if f + 1 < self.chunks_size else (c + 1, 0)

    def _data_writer(self, schema):
        import pyarrow.parquet as pq

        if self._data is not None and self._data[3] >= self.data_mb * 1e6:
            self._data[0].close()
            self._data, self._data_pos = None, self._next(self._data_pos)
        if self._data is None:
            c, f = self._data_pos
            path = self._tmp / DATA_PATH.format(chunk_index=c, file_index=f)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = [pq.ParquetWriter(str(path), schema), c, f, 0]
        return self._data

    def _video_file(self, key: str) -> tuple[VideoFile, int, int]:
        cur = self._videos.get(key)
        if cur is not None and cur[0].bytes >= self.video_mb * 1e6:
            cur[0].close()
            cur, self._video_pos[key] = None, self._next(self._video_pos[key])
        if cur is None:
            c, f = self._video_pos[key]
            cur = (VideoFile(self._tmp / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)), c, f)
            self._videos[key] = cur
        return cur

    def schema(self):
        import pyarrow as pa

        cols = [(k, f["dtype"], f["shape"]) for k, f in self.features.items() if f["dtype"] != "video"]
        cols += [("timestamp", "float32", [1])] + [(k, "int64", [1]) for k in DEFAULT_KEYS[1:]]
        hf = {"info": {"features": {k: hf_feature(d, s) for k, d, s in cols}}}
        return pa.schema([(k, arrow_type(d, s)) for k, d, s in cols],
                         metadata={"huggingface": json.dumps(hf)})

    # -------------------------------------------------------------- episodes
    def add_episode(self, frames: Mapping[str, Any], task: str | Sequence[str]) -> int:
        """Append one episode: {feature: [T, *shape]} (cameras uint8 [T, H, W, 3]) and its task (or one per
        frame); returns its index."""
        import pyarrow as pa

        if self._closed:
            raise LatentVLAError("LeRobotWriter: add_episode after close()")
        e = len(self.episodes)
        where = f"{self.out_dir} episode {e}"
        missing = [k for k in self.features if k not in frames]
        extra = [k for k in frames if k not in self.features]
        if missing or extra:
            raise LatentVLAError(f"{where}: " + "; ".join(
                ([f"missing feature(s) {', '.join(missing)}"] if missing else [])
                + ([f"undeclared feature(s) {', '.join(extra)}"] if extra else [])))
        lengths = {k: len(v) for k, v in frames.items()}
        T = next(iter(lengths.values()), 0)
        if len(set(lengths.values())) > 1 or T == 0:
            raise LatentVLAError(f"{where}: features must have the same number (> 0) of frames, got {lengths}")
        per_frame = [task] * T if isinstance(task, str) else list(task)
        if len(per_frame) != T or not all(isinstance(x, str) and x for x in per_frame):
            raise LatentVLAError(f"{where}: task must be a non-empty string or one per frame ({T}), got {task!r}")
        cols: dict[str, np.ndarray] = {}
        for k, f in self.features.items():
            if f["dtype"] == "video":
                continue
            v = np.asarray(frames[k])
            if v.reshape(T, -1).shape[1] != int(np.prod(f["shape"])) or v.ndim > 1 + len(f["shape"]):
                raise LatentVLAError(f"{where}: feature {k!r} has shape {list(v.shape)}, expected [T, "
                                     f"{', '.join(map(str, f['shape']))}]")
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                raise LatentVLAError(f"{where}: feature {k!r} holds NaN or infinite values")
            cols[k] = v.reshape(T, *f["shape"]).astype(f["dtype"])
        for key in self.video_keys:
            imgs = np.asarray(frames[key])
            want = tuple(self.features[key]["shape"])
            if imgs.shape[1:] != want or imgs.dtype != np.uint8:
                raise LatentVLAError(f"{where}: camera {key!r} frames are {imgs.dtype} {list(imgs.shape)}, expected "
                                     f"uint8 [T, {', '.join(map(str, want))}]")
        # Encode every camera before appending any, so a failure leaves the files as they were.
        videos = {k: encode_episode_video(frames[k], self.fps, self.vcodec, self.crf, self.gop, f"{where} camera {k!r}")
                  for k in self.video_keys}
        task_index = np.array([self.tasks.setdefault(x, len(self.tasks)) for x in per_frame], np.int64)
        frame_index = np.arange(T, dtype=np.int64)
        cols.update(timestamp=(frame_index / self.fps).astype(np.float32), frame_index=frame_index,
                    episode_index=np.full(T, e, np.int64), index=self.num_frames + frame_index,
                    task_index=task_index)
        row: dict[str, Any] = {"episode_index": e, "tasks": list(dict.fromkeys(per_frame)), "length": T}
        for key, mp4 in videos.items():
            vf, c, fi = self._video_file(key)
            start = vf.append(mp4, T, self.fps)
            row.update({f"videos/{key}/chunk_index": c, f"videos/{key}/file_index": fi,
                        f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": start + T / self.fps})
            self._image_stats[key].append(image_stats(np.asarray(frames[key])))
        schema = self.schema()
        table = pa.Table.from_arrays([arrow_column(cols[n], *self._col_type(n)) for n in schema.names], schema=schema)
        w = self._data_writer(schema)
        w[0].write_table(table)
        w[3] += table.nbytes
        row.update({"data/chunk_index": w[1], "data/file_index": w[2], "dataset_from_index": self.num_frames,
                    "dataset_to_index": self.num_frames + T})
        for k in self._values:
            self._values[k].append(cols[k])
        row["_stats"] = {k: numeric_stats(cols[k]) for k in self._values}
        row["_stats"].update({k: self._image_stats[k][-1] for k in self.video_keys})
        self.episodes.append(row)
        self.num_frames += T
        return e

    def _col_type(self, name: str) -> tuple[str, list[int]]:
        if name in self.features:
            return self.features[name]["dtype"], self.features[name]["shape"]
        return ("float32" if name == "timestamp" else "int64"), [1]

    # -------------------------------------------------------------- metadata
    def _all_features(self) -> dict[str, dict]:
        feats = {}
        for k, f in self.features.items():
            feats[k] = dict(f)
            if f["dtype"] == "video":
                h, w, c = f["shape"]
                feats[k]["info"] = {"video.height": h, "video.width": w, "video.codec": CODECS[self.vcodec][1],
                                    "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": self.fps,
                                    "video.channels": c, "has_audio": False}
        for k in DEFAULT_KEYS:
            feats[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
        return feats

    def _write_meta(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = self._tmp / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        feats = self._all_features()
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type, "total_episodes":
                len(self.episodes), "total_frames": self.num_frames, "total_tasks": len(self.tasks),
                "chunks_size": self.chunks_size, "data_files_size_in_mb": self.data_mb,
                "video_files_size_in_mb": self.video_mb, "fps": self.fps,
                "splits": self.splits or {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.video_keys else None, "features": feats}
        (meta / "info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
        tasks = pa.table({"task_index": pa.array(list(self.tasks.values()), pa.int64()),
                          "__index_level_0__": pa.array(list(self.tasks), pa.large_string())})
        pandas_md = {"index_columns": ["__index_level_0__"], "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "str",
             "metadata": {"encoding": "UTF-8"}}], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "object", "numpy_type": "str",
             "metadata": None}], "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}}
        pq.write_table(tasks.replace_schema_metadata({"pandas": json.dumps(pandas_md)}), meta / "tasks.parquet")
        stats = {k: numeric_stats(np.concatenate(v)) for k, v in self._values.items()}
        stats.update({k: aggregate_image_stats(v) for k, v in self._image_stats.items()})
        (meta / "stats.json").write_text(json.dumps(stats, indent=4))
        pq.write_table(episodes_table(self.episodes, list(self.video_keys), list(feats)), self._tmp / EPISODES_PATH)

    def _finish(self) -> None:
        if not self.episodes:
            raise LatentVLAError(f"LeRobotWriter: {self.out_dir}: no episodes were added")
        if self._data is not None:
            self._data[0].close()
        for vf, _, _ in self._videos.values():
            vf.close()
        self._write_meta()

    def _release(self) -> None:
        for f in ([self._data[0]] if self._data else []) + [vf for vf, _, _ in self._videos.values()]:
            try:
                f.close()
            except Exception:  # the error that led here is what the caller sees
                pass


def episodes_table(episodes: Sequence[dict], video_keys: Sequence[str], stat_keys: Sequence[str]):
    """The `meta/episodes` table (column order as lerobot writes it) from the writer's episode rows."""
    import pyarrow as pa

    cols: dict[str, list] = {}
    names = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
             "dataset_to_index"]
    for key in video_keys:
        names += [f"videos/{key}/{n}" for n in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    for n in names:
        cols[n] = [r[n] for r in episodes]
    for k in stat_keys:
        if k not in episodes[0]["_stats"]:
            continue
        for s in episodes[0]["_stats"][k]:
            cols[f"stats/{k}/{s}"] = [r["_stats"][k][s] for r in episodes]
    cols["meta/episodes/chunk_index"] = [0] * len(episodes)
    cols["meta/episodes/file_index"] = [0] * len(episodes)
    arrays = {}
    for n, v in cols.items():
        if n.endswith("_timestamp"):
            arrays[n] = pa.array(v, pa.float64())
        elif n == "tasks":
            arrays[n] = pa.array(v, pa.list_(pa.string()))
        elif n.startswith("stats/"):
            arrays[n] = stats_array(n.rsplit("/", 1)[1], v)
        else:
            arrays[n] = pa.array(v)
    return pa.table(arrays)


