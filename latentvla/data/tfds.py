"""TFDS builder directories (`<root>/<name>/<version>/`): read and write, no TensorFlow.

Reader:
    b = TFDSBuilderDir(path)
    b.name, b.version, b.features (raw features.json), b.specs (flat {path: FeatureSpec}),
    b.split_names, b.num_episodes(split), b.shard_paths(split), b.shard_lengths(split)
    b.read_episode(index, split="train", keys=None) -> Episode
    b.iter_episodes(split="train", keys=None) -> Iterator[Episode]

An Episode is a dict: per-step values keyed by their schema path without `steps/`
(`"observation/image"` -> list of T encoded image bytes, `"action"` -> float32 [T, 7],
`"language_instruction"` -> list[str], `"is_first"` -> bool [T]) and episode metadata under
`"episode_metadata/<key>"` (text -> str, tensors -> array of the declared shape).
`keys` accepts either spelling (`"action"` or `"steps/action"`).

Writer:
    with TFDSWriter(out_dir, features, splits=("train",)) as w:   # out_dir = <root>/<name>/<version>
        w.add_episode(episode, split="train")
Episodes keep their order (global episode i of a split stays episode i), so an annotated copy is
index-aligned with its source. Images may be given as encoded bytes or uint8 arrays [T, H, W, C]
(encoded with PIL, JPEG quality 95). Records use sorted feature keys (protobuf deterministic
order); each feature's bytes equal TFDS's. The directory appears only when `close()` succeeds.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.data.example import decode_example, record_context
from latentvla.data.features import STEPS, FeatureSpec, parse_features_json
from latentvla.data.tfrecord import read_record_at
from latentvla.errors import LatentVLAError

Episode = dict
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def shard_filename(template: str, name: str, split: str, index: int, num_shards: int,
                   file_format: str = "tfrecord") -> str:
    return (template.replace("{DATASET}", name).replace("{SPLIT}", split).replace("{FILEFORMAT}", file_format)
            .replace("{SHARD_X_OF_Y}", f"{index:05d}-of-{num_shards:05d}").replace("{SHARD_INDEX}", f"{index:05d}")
            .replace("{NUM_SHARDS}", f"{num_shards:05d}"))


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise LatentVLAError(f"{path}: {what} not found (expected a TFDS builder directory <root>/<name>/<version>/)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LatentVLAError(f"{path}: cannot parse {what} ({e})") from None


def step_key(key: str) -> str:
    """Schema path of an Episode key: 'action' -> 'steps/action'; metadata stays as is."""
    if key.startswith(STEPS + "/") or key.startswith("episode_metadata/"):
        return key
    return f"{STEPS}/{key}"


def episode_key(path: str) -> str:
    return path[len(STEPS) + 1:] if path.startswith(STEPS + "/") else path


class TFDSBuilderDir:
    """Read-only view of one TFDS builder directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            from latentvla.utils.paths import entry_problem

            raise LatentVLAError(f"{self.path}: {entry_problem(self.path) or 'dataset version directory not found'}")
        info = _load_json(self.path / "dataset_info.json", "dataset_info.json")
        self.info = info
        self.features = _load_json(self.path / "features.json", "features.json")
        self.specs: dict[str, FeatureSpec] = parse_features_json(self.features, str(self.path / "features.json"))
        self.name = str(info.get("name") or self.path.parent.name)
        self.version = str(info.get("version") or self.path.name)
        self.file_format = str(info.get("fileFormat") or "tfrecord")
        if self.file_format != "tfrecord":
            raise LatentVLAError(f"{self.path / 'dataset_info.json'}: fileFormat {self.file_format!r} is not supported "
                                 "(only tfrecord)")
        self._splits: dict[str, dict] = {}
        for s in info.get("splits") or []:
            self._splits[str(s.get("name"))] = s
        self._offsets: dict[Path, list[int]] = {}

    def __repr__(self) -> str:
        return f"TFDSBuilderDir({str(self.path)!r})"

    # ------------------------------------------------------------------ layout
    @property
    def split_names(self) -> list[str]:
        return list(self._splits)

    def _split(self, split: str) -> dict:
        if split not in self._splits:
            raise LatentVLAError(f"{self.path / 'dataset_info.json'}: no split {split!r}; splits: "
                                 f"{', '.join(self._splits) or '(none)'}")
        return self._splits[split]

    def shard_lengths(self, split: str = "train") -> list[int]:
        s = self._split(split)
        lengths = s.get("shardLengths")
        if lengths is None:
            raise LatentVLAError(f"{self.path / 'dataset_info.json'}: split {split!r} lacks 'shardLengths'")
        return [int(n) for n in lengths]

    def shard_paths(self, split: str = "train") -> list[Path]:
        s = self._split(split)
        template = str(s.get("filepathTemplate") or DEFAULT_TEMPLATE)
        n = len(self.shard_lengths(split))
        paths = [self.path / shard_filename(template, self.name, split, i, n, self.file_format) for i in range(n)]
        from latentvla.utils.paths import entry_problem

        missing = [p.name + (f" ({problem})" if (problem := entry_problem(p, want_dir=False)) else "")
                   for p in paths if not p.is_file()]
        if missing:
            raise LatentVLAError(f"{self.path}: split {split!r} shard file(s) missing: {', '.join(missing[:3])}"
                                 + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
        return paths

    def num_episodes(self, split: str = "train") -> int:
        return sum(self.shard_lengths(split))

    def record_offsets(self, shard: Path) -> list[int]:
        """Byte offset of each record of a shard (hops over headers; data CRCs checked on read)."""
        if shard not in self._offsets:
            offs = []
            size = shard.stat().st_size
            with open(shard, "rb") as f:
                pos = 0
                while pos < size:
                    f.seek(pos)
                    head = f.read(8)
                    if len(head) < 8:
                        raise LatentVLAError(f"{shard}: truncated TFRecord at offset {pos}: incomplete header")
                    (length,) = struct.unpack("<Q", head)
                    if pos + 16 + length > size:
                        raise LatentVLAError(f"{shard}: truncated TFRecord at offset {pos}: record needs {length + 16} "
                                             f"bytes, file has {size - pos}")
                    offs.append(pos)
                    pos += 16 + length
            self._offsets[shard] = offs
        return self._offsets[shard]

    def locate(self, index: int, split: str = "train") -> tuple[Path, int]:
        """(shard path, record byte offset) of episode `index` of `split`."""
        lengths = self.shard_lengths(split)
        total = sum(lengths)
        if not 0 <= index < total:
            raise LatentVLAError(f"{self.path}: episode {index} out of range; split {split!r} has {total} episodes")
        for shard, n in zip(self.shard_paths(split), lengths, strict=True):
            if index < n:
                offs = self.record_offsets(shard)
                if len(offs) != n:
                    raise LatentVLAError(f"{shard}: holds {len(offs)} records but dataset_info.json says {n}")
                return shard, offs[index]
            index -= n
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ episodes
    def _resolve_keys(self, keys: Sequence[str] | None) -> list[str]:
        if keys is None:
            return list(self.specs)
        out = []
        for k in keys:
            path = k if k in self.specs else step_key(k)
            if path not in self.specs:
                raise LatentVLAError(f"{self.path / 'features.json'}: no feature {k!r}; features: "
                                     f"{', '.join(episode_key(p) for p in self.specs)}")
            out.append(path)
        return out

    def decode_record(self, data: bytes, keys: Sequence[str] | None = None, where: str = "record") -> Episode:
        paths = self._resolve_keys(keys)
        with record_context(where):
            raw = decode_example(data, paths)
        return decode_episode(raw, {p: self.specs[p] for p in paths}, where)

    def read_episode(self, index: int, split: str = "train", keys: Sequence[str] | None = None) -> Episode:
        shard, offset = self.locate(index, split)
        data = read_record_at(shard, offset)
        return self.decode_record(data, keys, f"{shard} (record at offset {offset})")

    def iter_episodes(self, split: str = "train", keys: Sequence[str] | None = None) -> Iterator[Episode]:
        from latentvla.data.tfrecord import iter_records

        lengths = self.shard_lengths(split)
        for shard, n in zip(self.shard_paths(split), lengths, strict=True):
            count = 0
            for offset, data in iter_records(shard):
                yield self.decode_record(data, keys, f"{shard} (record at offset {offset})")
                count += 1
            if count != n:
                raise LatentVLAError(f"{shard}: holds {count} records but dataset_info.json says {n}")


# ----------------------------------------------------------------------------- episode <-> example

def decode_episode(raw: Mapping[str, Any], specs: Mapping[str, FeatureSpec], where: str) -> Episode:
    """Turn decoded Example lists into an Episode using the schema's shapes and dtypes."""
    ep: Episode = {}
    num_steps = None
    for path, spec in specs.items():
        if path not in raw:
            raise LatentVLAError(f"{where}: feature {path!r} declared in features.json is missing from the record")
        val = raw[path]
        if spec.storage == "bytes":
            if not isinstance(val, list):
                raise LatentVLAError(f"{where}: feature {path!r} should be a bytes_list")
            items = val if spec.kind == "image" else [b.decode("utf-8", errors="replace") for b in val]
            n = len(items)
            out = items if spec.in_steps else (items[0] if len(items) == 1 else items)
        else:
            if isinstance(val, list):
                if val:
                    raise LatentVLAError(f"{where}: feature {path!r} should be a numeric list, found bytes")
                val = np.zeros(0, np.float32 if spec.storage == "float" else np.int64)
            if spec.storage == "float" and val.dtype != np.float32 or spec.storage == "int64" and val.dtype != np.int64:
                raise LatentVLAError(f"{where}: feature {path!r} is stored as the wrong list kind for "
                                     f"dtype {spec.dtype}")
            if val.size % spec.numel:
                raise LatentVLAError(f"{where}: feature {path!r} has {val.size} values, not a multiple of its shape "
                                     f"{list(spec.shape)}")
            n = val.size // spec.numel
            arr = val.astype(spec.np_dtype, copy=False)
            out = arr.reshape((n, *spec.shape)) if spec.in_steps else arr.reshape(spec.shape)
        if spec.in_steps:
            if num_steps is None:
                num_steps = n
            elif n != num_steps:
                raise LatentVLAError(f"{where}: feature {path!r} has {n} steps, other step features have {num_steps}")
        ep[episode_key(path)] = out
    return ep


# The writer lives in its own module (keeps files small); re-exported here so
# `from latentvla.data.tfds import TFDSWriter` works.
from latentvla.data.tfds_writer import TFDSWriter, encode_episode, encode_image, write_tfds_dataset  # noqa: E402,F401
