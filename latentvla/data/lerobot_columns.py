"""LeRobot parquet columns: the column convention, feature declarations, statistics, and
`LeRobotColumnCopy` (a copy of a dataset with new per-frame columns, for `latentvla lam annotate`).

Column convention (shared with `latentvla.data.lerobot`): a feature of shape [1] is a plain
column; shape [D] a `fixed_size_list<dtype>[D]`; shape [A, B] a `fixed_size_list<fixed_size_list
<dtype>[B]>[A]`. Latent labels from `latentvla lam annotate` are the per-frame features
`latent_idx` (int64, [C]) and `latent_z` (float32, [C, Z]), the shapes of the RLDS keys
`steps/latent_idx` / `steps/latent_z`.

Statistics: numeric features get exact min/max/mean/std and true quantiles (q01, q10, q50, q90,
q99) per episode and over the dataset; camera stats are per channel in [0, 1], shape [3, 1, 1],
from up to `IMAGE_STATS_FRAMES` frames per episode, dataset quantiles as count-weighted means of
the episodes' (as lerobot does).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from latentvla.data.lerobot import DEFAULT_KEYS, column_values, import_pyarrow, read_parquet
from latentvla.errors import LatentVLAError
from latentvla.utils.atomic import atomic_path, atomic_write_json

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
NUMERIC_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32",
                  "bool")
IMAGE_STATS_FRAMES = 100


def arrow_type(dtype: str, shape: Sequence[int]):
    pa, _ = import_pyarrow()
    t = pa.from_numpy_dtype(np.dtype(dtype))
    if list(shape) == [1]:
        return t
    for n in reversed(list(shape)):
        t = pa.list_(t, int(n))
    return t


def arrow_column(values: np.ndarray, dtype: str, shape: Sequence[int]):
    """[N, *shape] values -> a pyarrow array in the column convention above."""
    pa, _ = import_pyarrow()
    arr = np.ascontiguousarray(np.asarray(values).astype(dtype, copy=False))
    n = len(arr)
    if list(shape) == [1]:
        return pa.array(arr.reshape(n))
    out = pa.array(arr.reshape(-1))
    for d in reversed(list(shape)):
        out = pa.FixedSizeListArray.from_arrays(out, int(d))
    return out


def hf_feature(dtype: str, shape: Sequence[int]) -> dict:
    """The `datasets` feature description of a column (the parquet's `huggingface` schema metadata)."""
    value = {"dtype": dtype, "_type": "Value"}
    if list(shape) == [1]:
        return value
    if len(shape) == 1:
        return {"feature": value, "length": int(shape[0]), "_type": "List"}
    return {"shape": [int(s) for s in shape], "dtype": dtype, "_type": f"Array{len(shape)}D"}


# ----------------------------------------------------------------------------- statistics

def numeric_stats(values: np.ndarray) -> dict[str, list]:
    """Stats over axis 0 of [N, *shape] values (ints keep int min/max, as lerobot's files)."""
    v = np.asarray(values)
    v = v.reshape(len(v), 1) if v.ndim == 1 else v  # stats keep the feature's shape ([1] for scalars)
    f = v.astype(np.float64)
    keep = v if np.issubdtype(v.dtype, np.integer) else f
    out = {"min": keep.min(0).tolist(), "max": keep.max(0).tolist(), "mean": f.mean(0).tolist(),
           "std": f.std(0).tolist(), "count": [len(v)]}
    for name, q in QUANTILES.items():
        out[name] = np.quantile(f, q, axis=0).tolist()
    return out


def _pixel_sample(frames: np.ndarray) -> np.ndarray:
    """Up to IMAGE_STATS_FRAMES frames, every pixel of at most ~128 x 128, as float [n, 3] in [0, 1]."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), IMAGE_STATS_FRAMES)).round().astype(int))
    step = max(1, max(frames.shape[1:3]) // 128)
    return frames[idx, ::step, ::step].reshape(-1, 3).astype(np.float64) / 255.0


def image_stats(frames: np.ndarray) -> dict[str, list]:
    px = _pixel_sample(frames)
    c = lambda a: np.asarray(a).reshape(3, 1, 1).tolist()  # noqa: E731
    out = {"min": c(px.min(0)), "max": c(px.max(0)), "mean": c(px.mean(0)), "std": c(px.std(0)),
           "count": [len(frames)]}
    for name, q in QUANTILES.items():
        out[name] = c(np.quantile(px, q, axis=0))
    return out


def aggregate_image_stats(per_episode: Sequence[dict]) -> dict[str, list]:
    counts = np.array([s["count"][0] for s in per_episode], np.float64)
    w = counts / counts.sum()
    get = lambda k: np.array([s[k] for s in per_episode], np.float64)  # noqa: E731
    mean = (get("mean") * w[:, None, None, None]).sum(0)
    var = ((get("std") ** 2 + (get("mean") - mean) ** 2) * w[:, None, None, None]).sum(0)
    out = {"min": get("min").min(0).tolist(), "max": get("max").max(0).tolist(), "mean": mean.tolist(),
           "std": np.sqrt(var).tolist(), "count": [int(counts.sum())]}
    for name in QUANTILES:
        out[name] = (get(name) * w[:, None, None, None]).sum(0).tolist()
    return out


def stats_array(stat: str, values: list):
    """A `stats/<feature>/<stat>` column: count, min and max as they come (ints stay ints), the rest float64."""
    pa, _ = import_pyarrow()
    if stat in ("count", "min", "max"):
        return pa.array(values)
    t, x = pa.float64(), values[0]
    while isinstance(x, list):
        t, x = pa.list_(t), x[0] if x else 0.0
    return pa.array(values, t)


def check_features(features: Mapping[str, Mapping], where: str = "LeRobotWriter") -> dict[str, dict]:
    out = {}
    for key, f in features.items():
        if key in DEFAULT_KEYS:
            raise LatentVLAError(f"{where}: feature {key!r} is written by the writer itself; leave it out")
        if not isinstance(f, Mapping) or "dtype" not in f or "shape" not in f:
            raise LatentVLAError(f"{where}: feature {key!r} needs 'dtype' and 'shape', got {f!r}")
        dtype, shape = str(f["dtype"]), [int(s) for s in f["shape"]]
        if dtype == "video":
            if len(shape) != 3 or shape[2] != 3:
                raise LatentVLAError(f"{where}: video feature {key!r} needs shape [H, W, 3], got {shape}")
        elif dtype not in NUMERIC_DTYPES:
            raise LatentVLAError(f"{where}: feature {key!r}: dtype {dtype!r} is not supported (video or one of "
                                 f"{', '.join(NUMERIC_DTYPES)})")
        elif not shape or len(shape) > 2:
            raise LatentVLAError(f"{where}: feature {key!r}: shape {shape} must have 1 or 2 dims")
        out[key] = {"dtype": dtype, "shape": shape, "names": f.get("names")}
        if "info" in f:
            out[key]["info"] = dict(f["info"])
    return out


# ----------------------------------------------------------------------------- copy with new columns

class LeRobotColumnCopy:
    """Build, in `staging`, a copy of a LeRobot dataset (v3.0 or v2.1) with new per-frame columns.

    Data parquet files are rewritten one at a time (`write_file`, each atomic, so a rerun skips the
    finished ones); every other file keeps its bytes: videos are hard-linked (copied across file
    systems), the other meta files copied. `finish()` declares the new features in `info.json` and
    adds their statistics (per episode, and in `stats.json` for v3.0), reading them back from the
    written files, so a resumed run needs no state.
    """

    def __init__(self, src, staging: Path, new_features: dict[str, dict]):
        self.src, self.staging = src, Path(staging)
        self.new = check_features(new_features, str(src.path))
        clash = [k for k in self.new if k in src.features]
        if clash:
            raise LatentVLAError(f"{src.info_path}: already declares {', '.join(clash)}")
        self.files: dict[Path, list[int]] = {}
        for row in src.episodes:
            e = int(row["episode_index"])
            self.files.setdefault(src.data_file(e).relative_to(src.path), []).append(e)

    def done(self, rel: Path) -> bool:
        return (self.staging / rel).is_file()

    def write_file(self, rel: Path, values: dict[int, dict[str, object]]) -> None:
        """Rewrite data file `rel` with `values[episode_index][feature]` ([T, *shape]) added per row."""
        _, pq = import_pyarrow()
        path = self.src.path / rel
        table = read_parquet(path)
        for col in ("episode_index", "frame_index"):
            if col not in table.column_names:
                raise LatentVLAError(f"{path}: no column {col!r}")
        ep, fr = (table.column(c).to_numpy() for c in ("episode_index", "frame_index"))
        pos = table.column_names.index("timestamp") if "timestamp" in table.column_names else table.num_columns
        for name, f in self.new.items():
            col = np.zeros((table.num_rows, *f["shape"]), f["dtype"])
            for e in np.unique(ep):
                rows = np.flatnonzero(ep == e)
                v = np.asarray(values[int(e)][name])
                if len(v) <= fr[rows].max():
                    raise LatentVLAError(f"{path}: episode {e} has {len(rows)} rows; {name} has {len(v)} values")
                col[rows] = v[fr[rows]]
            table = table.add_column(pos, name, arrow_column(col, f["dtype"], f["shape"]))
            pos += 1
        meta = dict(table.schema.metadata or {})
        if b"huggingface" in meta:
            try:
                hf = json.loads(meta[b"huggingface"])
                feats = hf["info"]["features"]
                hf["info"]["features"] = {k: feats[k] for k in feats if k in table.column_names}
                for name, f in self.new.items():
                    hf["info"]["features"][name] = hf_feature(f["dtype"], f["shape"])
                meta[b"huggingface"] = json.dumps(hf).encode()
            except (ValueError, KeyError, TypeError):
                meta.pop(b"huggingface")  # unreadable: `datasets` then infers the features from the schema
        table = table.replace_schema_metadata(meta)
        md = pq.ParquetFile(path).metadata
        with atomic_path(self.staging / rel) as tmp, pq.ParquetWriter(str(tmp), table.schema) as w:
            start = 0
            for i in range(md.num_row_groups):  # keep the source's row groups (one per episode, as lerobot writes)
                w.write_table(table.slice(start, md.row_group(i).num_rows))
                start += md.row_group(i).num_rows

    def _link_unchanged(self) -> None:
        src = self.src.path
        rewritten = {Path("meta/info.json"), Path("meta/stats.json"), Path("meta/episodes_stats.jsonl"),
                     *self.files}
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src)
            skip = rel in rewritten or rel.parts[:2] == ("meta", "episodes") or (self.staging / rel).exists()
            if p.is_dir() or skip or any(part.startswith(".") for part in rel.parts):  # also caches, temp files
                continue
            (self.staging / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel.parts[0] == "videos":
                try:
                    os.link(p, self.staging / rel)
                    continue
                except OSError:
                    pass
            shutil.copy2(p, self.staging / rel)

    def _new_stats(self) -> tuple[dict[int, dict[str, dict]], dict[str, dict]]:
        """Stats of the new columns, read back from the written files: per episode, and over the dataset."""
        _, pq = import_pyarrow()
        per_episode: dict[int, dict[str, dict]] = {}
        every: dict[str, list] = {k: [] for k in self.new}
        for rel in self.files:
            t = pq.read_table(self.staging / rel, columns=["episode_index", *self.new])
            ep = t.column("episode_index").to_numpy()
            vals = {k: column_values(t, k, f["shape"], f["dtype"], str(rel)) for k, f in self.new.items()}
            for e in dict.fromkeys(ep.tolist()):
                per_episode[int(e)] = {k: numeric_stats(v[ep == e]) for k, v in vals.items()}
            for k, v in vals.items():
                every[k].append(v)
        return per_episode, {k: numeric_stats(np.concatenate(v)) for k, v in every.items()}

    def finish(self, extra_meta: dict[str, object] | None = None) -> None:
        missing = [str(r) for r in self.files if not self.done(r)]
        if missing:
            raise LatentVLAError(f"{self.staging}: data file(s) not written yet: {', '.join(missing[:3])}")
        self._link_unchanged()
        stats, dataset_stats = self._new_stats()
        info = json.loads(self.src.info_path.read_text())
        feats = {k: v for k, v in info["features"].items() if k not in DEFAULT_KEYS}
        feats.update(self.new)
        feats.update({k: v for k, v in info["features"].items() if k in DEFAULT_KEYS})
        info["features"] = feats
        meta = self.staging / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        if self.src.v3:
            self._write_episodes_v3(stats)
            ds = json.loads((self.src.path / "meta" / "stats.json").read_text()) \
                if (self.src.path / "meta" / "stats.json").is_file() else {}
            ds.update(dataset_stats)
            atomic_write_json(meta / "stats.json", ds, indent=4)
        elif (self.src.path / "meta" / "episodes_stats.jsonl").is_file():
            lines = []
            for line in (self.src.path / "meta" / "episodes_stats.jsonl").read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    row.setdefault("stats", {}).update({k: {s: v for s, v in st.items() if not s.startswith("q")}
                                                        for k, st in stats[int(row["episode_index"])].items()})
                    lines.append(json.dumps(row))
            (meta / "episodes_stats.jsonl").write_text("\n".join(lines) + "\n")
        for name, obj in (extra_meta or {}).items():
            atomic_write_json(meta / name, obj)
        (meta / "info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))

    def _write_episodes_v3(self, stats: dict[int, dict[str, dict]]) -> None:
        _, pq = import_pyarrow()
        for p in sorted((self.src.path / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
            t = pq.read_table(p)
            ep = t.column("episode_index").to_pylist()
            pos = t.column_names.index("meta/episodes/chunk_index") if "meta/episodes/chunk_index" in \
                t.column_names else t.num_columns
            for k in self.new:
                for s in stats[ep[0]][k]:
                    t = t.add_column(pos, f"stats/{k}/{s}", stats_array(s, [stats[e][k][s] for e in ep]))
                    pos += 1
            out = self.staging / p.relative_to(self.src.path)
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(t, out)
