"""LeRobot dataset directories (v3.0 and v2.1) read with pyarrow + PyAV; no `lerobot` package.

Reader (mirrors `TFDSBuilderDir`):
    d = LeRobotDir(path)                  # <path>/meta/info.json must exist
    d.info (parsed meta/info.json), d.codebase_version ("v3.0" | "v2.1" | "v2.0"), d.fps, d.robot_type,
    d.features (info["features"]), d.video_keys, d.split_names, d.tasks {task_index: str}
    d.num_episodes(split="train"), d.episode_lengths(split="train") -> int64 [E]
    d.episode_indices(split) -> the global `episode_index` of each position of the split
    d.read_episode(i, split="train", keys=None) -> dict of per-step numpy arrays keyed by feature name:
        "action" float32 [T, 7], "observation.state" float32 [T, 8], camera keys -> decoded uint8 [T, H, W, 3],
        "timestamp" float32 [T], "frame_index" / "episode_index" / "index" / "task_index" int64 [T]
        (features of shape [1] come out as [T]), plus "task" (str, the episode's first task).
        `keys` limits the features read (e.g. keys=["action"] decodes no video).
    d.iter_episodes(split="train", keys=None) -> Iterator of the same dicts
    d.frames(i, steps, camera_key, split="train") -> uint8 [N, H, W, 3]
    d.step_table(i, split) -> pyarrow.Table of episode i's rows (all parquet columns)
`i` is the position within the split (the split "0:3" maps positions 0..2 to episode_index 0..2).

Frames: the row's video time is `from_timestamp + timestamp` (v3.0; v2.1 files start at 0) and its
frame the one with the nearest pts within 1e-4 s (`latentvla.data.video`). Decoders stay open per
process (`latentvla.data.handles.Handles`).

Latent labels (written by `latentvla lam annotate`, read by training): per-frame parquet columns
beside `action`, declared in `meta/info.json` `features` like any other feature:
    "latent_idx": {"dtype": "int64", "shape": [C], "names": null}
        column fixed_size_list<int64>[C]
    "latent_z":   {"dtype": "float32", "shape": [C, Z], "names": null}
        column fixed_size_list<fixed_size_list<float>[Z]>[C]
(the RLDS shapes: C codes per step, Z values per code vector; a flat row-major [C*Z] list column is
read too: any list nesting is accepted when the value count matches the declared shape). The
codebook size K goes in `<dir>/latent_annotation.json` (dataset root, as for RLDS, with the same
fields, e.g. {"codebook_size": K, ...}); training reads K from there. The annotated copy of
`<root>/<name>/` is `<root>/<name>_latent/` (found on its own when the plain directory lacks the
labels, as for RLDS).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.errors import LatentVLAError

INSTALL_HINT = "pip install latentvla[lerobot]"
VERSIONS = ("v2.0", "v2.1", "v3.0")
DEFAULT_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_NP = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32, "int16": np.int16,
       "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "float16": np.float16}


def import_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LatentVLAError(f"reading LeRobot datasets needs pyarrow: {INSTALL_HINT}") from None
    return pa, pq


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LatentVLAError(f"{path}: cannot parse {what} ({e})") from None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise LatentVLAError(f"{path}: missing (a LeRobot v2.x dataset lists its {path.stem} there)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LatentVLAError(f"{path}: line {n}: invalid JSON ({e})") from None
    return out


def read_parquet(path: Path, columns: Sequence[str] | None = None, metadata_only: bool = False):
    """The table of `path` (or with `metadata_only`, its `pyarrow.parquet.ParquetFile`), with one clear error
    when the file is missing or damaged."""
    _, pq = import_pyarrow()
    if not path.is_file():
        raise LatentVLAError(f"{path}: parquet file missing")
    try:
        if metadata_only:
            return pq.ParquetFile(path)
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError / KeyError for damaged or foreign files
        raise LatentVLAError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None


def column_values(table, name: str, shape: Sequence[int], dtype: str, where: str) -> np.ndarray:
    """A (possibly list-typed) column as numpy [n, *shape] ([n] for shape [] / [1])."""
    pa, _ = import_pyarrow()
    if name not in table.column_names:
        raise LatentVLAError(f"{where}: no column {name!r}; columns: {', '.join(table.column_names)}")
    col = table.column(name).combine_chunks()
    n = len(col)
    if col.null_count:
        raise LatentVLAError(f"{where}: column {name!r} has {col.null_count} null value(s)")
    while pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    vals = col.to_numpy(zero_copy_only=False)
    shape = tuple(int(s) for s in shape)
    scalar = shape in ((), (1,))
    numel = 1 if scalar else int(np.prod(shape))
    if vals.size != n * numel:
        raise LatentVLAError(f"{where}: column {name!r} has {vals.size} values for {n} rows, expected shape "
                             f"{list(shape)} per row (info.json)")
    out = vals.astype(_NP.get(dtype, vals.dtype), copy=False)
    return out.reshape(n) if scalar else out.reshape(n, *shape)


class LeRobotDir:
    """Read-only view of one LeRobot dataset directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise LatentVLAError(f"{self.path}: LeRobot dataset directory not found")
        info_path = self.path / "meta" / "info.json"
        if not info_path.is_file():
            raise LatentVLAError(f"{info_path}: missing meta/info.json (expected a LeRobot dataset directory with "
                                 "meta/info.json, data/ and videos/)")
        self.info_path = info_path
        self.info = _read_json(info_path, "meta/info.json")
        if not isinstance(self.info, dict):
            raise LatentVLAError(f"{info_path}: expected a JSON object")
        self.codebase_version = str(self.info.get("codebase_version", ""))
        if self.codebase_version not in VERSIONS:
            raise LatentVLAError(f"{info_path}: codebase_version {self.info.get('codebase_version')!r} is not "
                                 f"supported (expected one of {', '.join(VERSIONS)})")
        for k in ("fps", "features", "data_path"):
            if k not in self.info:
                raise LatentVLAError(f"{info_path}: lacks {k!r}")
        self.features: dict[str, dict] = dict(self.info["features"])
        self.fps = float(self.info["fps"])
        self.robot_type = self.info.get("robot_type")
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.chunks_size = int(self.info.get("chunks_size") or 1000)
        self._episodes: list[dict] | None = None
        self._splits: dict[str, list[int]] = {}
        self._tasks: dict[int, str] | None = None
        self._tables: dict[Path, Any] = {}
        self._frame_tables: dict[Path, Any] = {}
        from latentvla.data.handles import Handles

        self.handles = Handles()

    def __repr__(self) -> str:
        return f"LeRobotDir({str(self.path)!r})"

    @property
    def v3(self) -> bool:
        return self.codebase_version.startswith("v3")

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ metadata
    @property
    def split_names(self) -> list[str]:
        return list(self.info.get("splits") or {"train": f"0:{self.info.get('total_episodes', 0)}"})

    def episode_indices(self, split: str = "train") -> list[int]:
        if split not in self._splits:
            self._splits[split] = self._split_episodes(split)
        return self._splits[split]

    def _split_episodes(self, split: str) -> list[int]:
        splits = self.info.get("splits") or {"train": f"0:{len(self.episodes)}"}
        if split not in splits:
            raise LatentVLAError(f"{self.info_path}: no split {split!r}; splits: {', '.join(splits) or '(none)'}")
        spec = str(splits[split])
        try:
            a, b = (int(x) for x in spec.split(":"))
        except ValueError:
            raise LatentVLAError(f"{self.info_path}: split {split!r} is {spec!r}, expected 'start:end'") from None
        have = {int(e["episode_index"]) for e in self.episodes}
        missing = [e for e in range(a, b) if e not in have]
        if missing:
            raise LatentVLAError(f"{self.info_path}: split {split!r} ({spec}) names episode {missing[0]} that the "
                                 "episodes metadata lacks")
        return list(range(a, b))

    @property
    def episodes(self) -> list[dict]:
        """Per-episode metadata rows (stats columns left out), ordered by episode_index."""
        if self._episodes is None:
            if self.v3:
                files = sorted((self.path / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
                if not files:
                    raise LatentVLAError(f"{self.path / 'meta' / 'episodes'}: no chunk-*/file-*.parquet (the v3.0 "
                                         "episodes table)")
                rows = []
                for f in files:
                    names = read_parquet(f, metadata_only=True).schema_arrow.names
                    rows += read_parquet(f, [c for c in names if not c.startswith("stats/")]).to_pylist()
            else:
                rows = _read_jsonl(self.path / "meta" / "episodes.jsonl")
            for r in rows:
                if "episode_index" not in r or "length" not in r:
                    raise LatentVLAError(f"{self.path / 'meta'}: episode metadata row lacks episode_index/length: "
                                         f"{sorted(r)[:6]}")
            self._episodes = sorted(rows, key=lambda r: int(r["episode_index"]))
            self._by_index = {int(r["episode_index"]): r for r in self._episodes}
        return self._episodes

    def episode_meta(self, episode_index: int) -> dict:
        self.episodes  # noqa: B018 (loads the table)
        if episode_index not in self._by_index:
            raise LatentVLAError(f"{self.path}: no episode {episode_index} in the episodes metadata")
        return self._by_index[episode_index]

    @property
    def tasks(self) -> dict[int, str]:
        if self._tasks is None:
            if self.v3:
                t = read_parquet(self.path / "meta" / "tasks.parquet").to_pylist()
                key = next((k for k in ("task", "__index_level_0__") if t and k in t[0]), None)
                if t and (key is None or "task_index" not in t[0]):
                    raise LatentVLAError(f"{self.path / 'meta' / 'tasks.parquet'}: expected columns task_index and "
                                         f"task (or the pandas index), found {sorted(t[0])}")
                self._tasks = {int(r["task_index"]): str(r[key]) for r in t}
            else:
                self._tasks = {int(r["task_index"]): str(r["task"])
                               for r in _read_jsonl(self.path / "meta" / "tasks.jsonl")}
        return self._tasks

    def num_episodes(self, split: str = "train") -> int:
        return len(self.episode_indices(split))

    def episode_lengths(self, split: str = "train") -> np.ndarray:
        return np.asarray([int(self.episode_meta(e)["length"]) for e in self.episode_indices(split)], np.int64)

    @property
    def specs(self) -> dict:
        """Per-step features as `{"steps/<key>": FeatureSpec}` (the shape TFDSBuilderDir.specs has)."""
        from latentvla.data.features import FeatureSpec

        out = {}
        for k, f in self.features.items():
            shape = tuple(int(s) for s in f.get("shape") or ())
            if f.get("dtype") in ("video", "image"):
                out[f"steps/{k}"] = FeatureSpec("image", shape, "uint8", in_steps=True)
            elif f.get("dtype") in _NP:
                out[f"steps/{k}"] = FeatureSpec("tensor", () if shape == (1,) else shape, str(f["dtype"]),
                                                in_steps=True)
        return out

    def feature(self, key: str) -> dict:
        if key not in self.features:
            raise LatentVLAError(f"{self.info_path}: no feature {key!r}; features: {', '.join(self.features)}")
        return self.features[key]

    # ------------------------------------------------------------------ files
    def data_file(self, episode_index: int) -> Path:
        m = self.episode_meta(episode_index)
        tpl = str(self.info["data_path"])
        try:
            if self.v3:
                rel = tpl.format(chunk_index=int(m["data/chunk_index"]), file_index=int(m["data/file_index"]))
            else:
                rel = tpl.format(episode_chunk=episode_index // self.chunks_size, episode_index=episode_index)
        except (KeyError, IndexError, ValueError) as e:
            raise LatentVLAError(f"{self.info_path}: data_path {tpl!r} cannot be filled for episode {episode_index} "
                                 f"({e})") from None
        return self.path / rel

    def video_file(self, episode_index: int, key: str) -> tuple[Path, float]:
        """(mp4 path, the episode's start time inside it in seconds)."""
        m = self.episode_meta(episode_index)
        tpl = str(self.info.get("video_path") or "")
        if not tpl:
            raise LatentVLAError(f"{self.info_path}: lacks 'video_path' but declares video feature {key!r}")
        try:
            if self.v3:
                rel = tpl.format(video_key=key, chunk_index=int(m[f"videos/{key}/chunk_index"]),
                                 file_index=int(m[f"videos/{key}/file_index"]))
                start = float(m[f"videos/{key}/from_timestamp"])
            else:
                rel = tpl.format(episode_chunk=episode_index // self.chunks_size, video_key=key,
                                 episode_index=episode_index)
                start = 0.0
        except (KeyError, IndexError, ValueError) as e:
            raise LatentVLAError(f"{self.path / 'meta'}: cannot locate the {key!r} video of episode {episode_index} "
                                 f"({type(e).__name__}: {e})") from None
        return self.path / rel, start

    def table(self, path: Path):
        """A data parquet file (the last few kept in memory)."""
        if path not in self._tables:
            if len(self._tables) >= 4:
                self._tables.pop(next(iter(self._tables)))
            self._tables[path] = read_parquet(path)
        return self._tables[path]

    def step_table(self, i: int, split: str = "train"):
        e = self._episode_at(i, split)
        path = self.data_file(e)
        t = self.table(path)
        if self.v3 or "episode_index" in t.column_names:
            import pyarrow.compute as pc

            t = t.filter(pc.equal(t.column("episode_index"), e))
        n = int(self.episode_meta(e)["length"])
        if t.num_rows != n:
            raise LatentVLAError(f"{path}: episode {e} has {t.num_rows} rows but the episodes metadata says {n}")
        return t

    def _episode_at(self, i: int, split: str) -> int:
        eps = self.episode_indices(split)
        if not 0 <= int(i) < len(eps):
            raise LatentVLAError(f"{self.path}: episode {i} out of range; split {split!r} has {len(eps)} episodes")
        return eps[int(i)]

    def frame_table(self, path: Path):
        if path not in self._frame_tables:
            from latentvla.data.video import frame_table

            self._frame_tables[path] = frame_table(path)
        return self._frame_tables[path]

    def frame_positions(self, episode_index: int, key: str, timestamps: np.ndarray) -> tuple[Path, np.ndarray,
                                                                                              np.ndarray]:
        """(mp4, pts [T], seek pts [T]) of the frames at the rows' timestamps."""
        path, start = self.video_file(episode_index, key)
        ft = self.frame_table(path)
        k = ft.nearest(start + np.asarray(timestamps, np.float64), f"episode {episode_index} camera {key!r}")
        return path, ft.pts[k], ft.seek_pts(k)

    # ------------------------------------------------------------------ episodes
    def frames(self, i: int, steps: Sequence[int], camera_key: str, split: str = "train") -> np.ndarray:
        e = self._episode_at(i, split)
        if camera_key not in self.video_keys:
            raise LatentVLAError(f"{self.info_path}: {camera_key!r} is not a video feature; video features: "
                                 f"{', '.join(self.video_keys) or '(none)'}")
        ts = column_values(self.step_table(i, split), "timestamp", [1], "float32", str(self.data_file(e)))
        steps = np.asarray(steps, np.int64)
        if len(steps) and (steps.min() < 0 or steps.max() >= len(ts)):
            raise LatentVLAError(f"{self.path}: episode {e} has {len(ts)} steps; asked for steps {steps.tolist()}")
        path, pts, seek = self.frame_positions(e, camera_key, ts[steps])
        dec = self.handles.video(path)
        return np.stack([dec.frame(p, s) for p, s in zip(pts, seek, strict=True)]) if len(steps) else \
            np.zeros((0, *self.features[camera_key].get("shape", (0, 0, 3))), np.uint8)

    def read_episode(self, i: int, split: str = "train", keys: Sequence[str] | None = None) -> dict[str, Any]:
        e = self._episode_at(i, split)
        t = self.step_table(i, split)
        where = f"{self.data_file(e)} (episode {e})"
        want = list(self.features) if keys is None else list(keys)
        out: dict[str, Any] = {}
        for k in want:
            if k == "task":
                continue
            f = self.feature(k)
            if f.get("dtype") == "video":
                out[k] = self.frames(i, range(t.num_rows), k, split)
            elif f.get("dtype") in ("image", "string"):
                raise LatentVLAError(f"{self.info_path}: feature {k!r} has dtype {f.get('dtype')!r}, which this "
                                     "reader does not support (videos and numeric features only)")
            else:
                out[k] = column_values(t, k, f.get("shape") or [1], str(f.get("dtype")), where)
        if "task_index" in t.column_names:
            ti = int(t.column("task_index")[0].as_py()) if t.num_rows else 0
            out["task"] = self.tasks.get(ti, "")
        else:
            tasks = self.episode_meta(e).get("tasks") or [""]
            out["task"] = str(tasks[0])
        return out

    def iter_episodes(self, split: str = "train", keys: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        for i in range(self.num_episodes(split)):
            yield self.read_episode(i, split, keys)
