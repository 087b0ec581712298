"""Helpers for the LeRobot tests: edit copies of the lerobot-written fixtures with pyarrow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIXTURE_NAMES = ("libero_tiny_lerobot", "libero_tiny_lerobot_h264", "libero_tiny_lerobot_v21")


def data_files(d: Path) -> list[Path]:
    return sorted((d / "data").rglob("*.parquet"))


def edit_info(d: Path, **changes) -> None:
    info = json.loads((d / "meta" / "info.json").read_text())
    info.update(changes)
    (d / "meta" / "info.json").write_text(json.dumps(info, indent=4))


def rewrite_column(path: Path, name: str, fn) -> None:
    """Replace column `name` of a parquet file by fn(numpy values [n, ...]) (same type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    col = t.column(name).combine_chunks()
    typ = col.type
    if pa.types.is_fixed_size_list(typ):
        vals = col.flatten().to_numpy().reshape(len(col), typ.list_size).copy()
        new = pa.FixedSizeListArray.from_arrays(pa.array(fn(vals).reshape(-1), typ.value_type), typ.list_size)
    else:
        new = pa.array(fn(col.to_numpy().copy()), typ)
    pq.write_table(t.set_column(t.column_names.index(name), name, new), path)


def add_latent_columns(d: Path, num_codes: int = 4, latent_dim: int = 128, codebook_size: int = 16,
                       seed: int = 0, nested: bool = True) -> None:
    """Add per-frame `latent_idx` int64 [C] and `latent_z` float32 [C, Z] columns (nested lists
    [C][Z], or flat C*Z) to every data file, declared in info.json and with latent_annotation.json
    — the LeRobot annotation layout (latentvla/data/lerobot.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    for path in data_files(d):
        t = pq.read_table(path)
        n = t.num_rows
        idx = rng.integers(0, codebook_size, (n, num_codes)).astype(np.int64)
        z = rng.normal(size=(n, num_codes * latent_dim)).astype(np.float32)
        t = t.append_column("latent_idx", pa.FixedSizeListArray.from_arrays(pa.array(idx.reshape(-1)), num_codes))
        flat = pa.array(z.reshape(-1))
        zcol = (pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, latent_dim), num_codes)
                if nested else pa.FixedSizeListArray.from_arrays(flat, num_codes * latent_dim))
        t = t.append_column("latent_z", zcol)
        pq.write_table(t, path)
    info = json.loads((d / "meta" / "info.json").read_text())
    info["features"]["latent_idx"] = {"dtype": "int64", "shape": [num_codes], "names": None}
    info["features"]["latent_z"] = {"dtype": "float32", "shape": [num_codes, latent_dim], "names": None}
    (d / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (d / "latent_annotation.json").write_text(json.dumps({"codebook_size": codebook_size, "num_codes": num_codes,
                                                          "latent_dim": latent_dim}))
