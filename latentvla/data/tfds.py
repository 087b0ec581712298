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

import io
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from latentvla.data.example import decode_example, encode_example
from latentvla.data.features import STEPS, FeatureSpec, as_flat, build_features_json, parse_features_json
from latentvla.data.tfrecord import RecordWriter, read_record_at
from latentvla.errors import LatentVLAError

Episode = dict
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def shard_filename(template: str, name: str, split: str, index: int, num_shards: int, file_format: str = "tfrecord") -> str:
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
            raise LatentVLAError(f"{self.path}: dataset version directory not found")
        info = _load_json(self.path / "dataset_info.json", "dataset_info.json")
        self.info = info
        self.features = _load_json(self.path / "features.json", "features.json")
        self.specs: dict[str, FeatureSpec] = parse_features_json(self.features, str(self.path / "features.json"))
        self.name = str(info.get("name") or self.path.parent.name)
        self.version = str(info.get("version") or self.path.name)
        self.file_format = str(info.get("fileFormat") or "tfrecord")
        if self.file_format != "tfrecord":
            raise LatentVLAError(f"{self.path / 'dataset_info.json'}: fileFormat {self.file_format!r} is not supported (only tfrecord)")
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
            raise LatentVLAError(f"{self.path / 'dataset_info.json'}: no split {split!r}; splits: {', '.join(self._splits) or '(none)'}")
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
        missing = [p.name for p in paths if not p.is_file()]
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
                        raise LatentVLAError(f"{shard}: truncated TFRecord at offset {pos}: record needs {length + 16} bytes, file has {size - pos}")
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
        for shard, n in zip(self.shard_paths(split), lengths):
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
                raise LatentVLAError(f"{self.path / 'features.json'}: no feature {k!r}; features: {', '.join(episode_key(p) for p in self.specs)}")
            out.append(path)
        return out

    def decode_record(self, data: bytes, keys: Sequence[str] | None = None, where: str = "record") -> Episode:
        paths = self._resolve_keys(keys)
        raw = decode_example(data, paths)
        return decode_episode(raw, {p: self.specs[p] for p in paths}, where)

    def read_episode(self, index: int, split: str = "train", keys: Sequence[str] | None = None) -> Episode:
        shard, offset = self.locate(index, split)
        data = read_record_at(shard, offset)
        return self.decode_record(data, keys, f"{shard} (record at offset {offset})")

    def iter_episodes(self, split: str = "train", keys: Sequence[str] | None = None) -> Iterator[Episode]:
        from latentvla.data.tfrecord import iter_records

        lengths = self.shard_lengths(split)
        for shard, n in zip(self.shard_paths(split), lengths):
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
                raise LatentVLAError(f"{where}: feature {path!r} is stored as the wrong list kind for dtype {spec.dtype}")
            if val.size % spec.numel:
                raise LatentVLAError(f"{where}: feature {path!r} has {val.size} values, not a multiple of its shape {list(spec.shape)}")
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


def encode_image(img: np.ndarray, encoding: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(np.asarray(img, dtype=np.uint8).squeeze(-1) if img.shape[-1] == 1 else np.asarray(img, dtype=np.uint8))
    if encoding == "jpeg":
        pil.save(buf, format="JPEG", quality=95)
    else:
        pil.save(buf, format="PNG")
    return buf.getvalue()


def encode_episode(episode: Mapping[str, Any], specs: Mapping[str, FeatureSpec], where: str = "episode") -> bytes:
    """Serialize an Episode to a tf.train.Example (sorted keys) after checking it against the schema."""
    feats: dict[str, Any] = {}
    num_steps = None
    given = {step_key(k) if step_key(k) in specs else k: v for k, v in episode.items()}
    extra = sorted(set(given) - set(specs))
    if extra:
        raise LatentVLAError(f"{where}: key(s) {', '.join(map(episode_key, extra))} are not declared in the features")
    for path in sorted(specs):
        spec = specs[path]
        if path not in given:
            raise LatentVLAError(f"{where}: missing feature {episode_key(path)!r}")
        val = given[path]
        if spec.kind == "image":
            if isinstance(val, np.ndarray) and val.dtype == np.uint8:
                if val.ndim != len(spec.shape) + (1 if spec.in_steps else 0):
                    raise LatentVLAError(f"{where}: image {episode_key(path)!r} has shape {val.shape}, expected [T, {', '.join(map(str, spec.shape))}]")
                val = [encode_image(im, spec.encoding) for im in (val if spec.in_steps else val[None])]
            elif isinstance(val, (bytes, bytearray)):
                val = [bytes(val)]
            val = [bytes(v) for v in val]
            n = len(val)
        elif spec.storage == "bytes":
            if isinstance(val, (str, bytes)):
                val = [val]
            val = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
            n = len(val)
        else:
            arr = np.asarray(val)
            if spec.in_steps:
                if arr.shape[1:] != spec.shape:
                    raise LatentVLAError(f"{where}: feature {episode_key(path)!r} has shape {list(arr.shape)}, expected [T, {', '.join(map(str, spec.shape))}]")
                n = arr.shape[0]
            else:
                if arr.shape != spec.shape and arr.size != spec.numel:
                    raise LatentVLAError(f"{where}: feature {path!r} has shape {list(arr.shape)}, expected {list(spec.shape)}")
                n = 1
            if spec.storage == "float":
                val = arr.astype(np.float32)
            else:
                val = arr.astype(np.int64)
        if spec.in_steps:
            if num_steps is None:
                num_steps = n
            elif n != num_steps:
                raise LatentVLAError(f"{where}: feature {episode_key(path)!r} has {n} steps, other step features have {num_steps}")
        feats[path] = val
    return encode_example(feats)


class TFDSWriter:
    """Write a TFDS builder directory that `tfds.builder_from_directory` loads unchanged."""

    def __init__(self, out_dir: str | os.PathLike, features: Mapping, splits: Sequence[str] = ("train",),
                 *, max_shard_bytes: int = 256 << 20, overwrite: bool = False, name: str | None = None,
                 version: str | None = None, description: str = ""):
        self.out_dir = Path(out_dir)
        self.name = name or self.out_dir.parent.name
        self.version = version or self.out_dir.name
        if len(self.version.split(".")) != 3:
            raise LatentVLAError(f"TFDSWriter: {self.out_dir}: the last path component must be a version like 1.0.0")
        if self.out_dir.exists() and not overwrite:
            raise LatentVLAError(f"TFDSWriter: {self.out_dir} already exists (pass overwrite=True to replace it)")
        self.specs = as_flat(features)
        self.features_json = build_features_json(self.specs)
        self.splits = list(splits)
        self.max_shard_bytes = int(max_shard_bytes)
        self.description = description
        self.overwrite = overwrite
        from latentvla.utils.atomic import _tmp_name

        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_name(self.out_dir)
        self._tmp.mkdir()
        self._shards: dict[str, list[tuple[Path, int, int]]] = {s: [] for s in self.splits}  # (tmp file, n, payload bytes)
        self._payload_bytes: dict[str, int] = {s: 0 for s in self.splits}
        self._writer: dict[str, RecordWriter | None] = {s: None for s in self.splits}
        self._counts: dict[str, int] = {s: 0 for s in self.splits}
        self._closed = False

    def _roll(self, split: str) -> None:
        w = self._writer[split]
        if w is not None:
            w.close()
            self._shards[split].append((w.path, len(w.offsets), self._payload_bytes[split]))
            self._payload_bytes[split] = 0
            self._writer[split] = None

    def add_episode(self, episode: Mapping[str, Any], split: str = "train") -> None:
        if self._closed:
            raise LatentVLAError("TFDSWriter: add_episode after close()")
        if split not in self._writer:
            raise LatentVLAError(f"TFDSWriter: unknown split {split!r}; declared splits: {', '.join(self.splits)}")
        data = encode_episode(episode, self.specs, f"{self.name} {split} episode {self._counts[split]}")
        w = self._writer[split]
        if w is not None and w.num_bytes + len(data) + 16 > self.max_shard_bytes and w.offsets:
            self._roll(split)
            w = None
        if w is None:
            w = RecordWriter(self._tmp / f".part-{split}-{len(self._shards[split]):05d}")
            self._writer[split] = w
        w.write(data)
        self._payload_bytes[split] += len(data)  # TFDS counts serialized examples, not framing
        self._counts[split] += 1

    def close(self) -> Path:
        if self._closed:
            return self.out_dir
        try:
            splits_info = []
            for split in self.splits:
                self._roll(split)
                shards = self._shards[split]
                if not shards:  # TFDS wants at least one shard per declared split
                    w = RecordWriter(self._tmp / f".part-{split}-00000")
                    w.close()
                    shards.append((w.path, 0, 0))
                n = len(shards)
                for i, (p, _, _) in enumerate(shards):
                    os.replace(p, self._tmp / shard_filename(DEFAULT_TEMPLATE, self.name, split, i, n))
                splits_info.append({
                    "filepathTemplate": DEFAULT_TEMPLATE,
                    "name": split,
                    "numBytes": str(sum(b for _, _, b in shards)),
                    "shardLengths": [str(c) for _, c, _ in shards],
                })
            info = {
                "description": self.description or f"{self.name}: RLDS dataset written by latentvla.",
                "fileFormat": "tfrecord",
                "moduleName": f"{self.name}.{self.name}_dataset_builder",
                "name": self.name,
                "releaseNotes": {self.version: "Written by latentvla."},
                "splits": splits_info,
                "version": self.version,
            }
            (self._tmp / "dataset_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            (self._tmp / "features.json").write_text(json.dumps(self.features_json, indent=4, sort_keys=True))
            if self.out_dir.exists():
                if not self.overwrite:
                    raise LatentVLAError(f"TFDSWriter: {self.out_dir} appeared while writing")
                from latentvla.utils.atomic import _tmp_name

                old = _tmp_name(self.out_dir)
                os.replace(self.out_dir, old)
                os.replace(self._tmp, self.out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self._tmp, self.out_dir)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.out_dir

    def abort(self) -> None:
        for w in self._writer.values():
            if w is not None:
                w.abort()
        self._closed = True
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def __enter__(self) -> "TFDSWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_tfds_dataset(out_dir: str | os.PathLike, features: Mapping, episodes: Iterable[Mapping] | Mapping[str, Iterable[Mapping]], **kw) -> Path:
    """Convenience: write all `episodes` (an iterable for "train", or {split: iterable})."""
    by_split = episodes if isinstance(episodes, Mapping) else {"train": episodes}
    with TFDSWriter(out_dir, features, splits=list(by_split), **kw) as w:
        for split, eps in by_split.items():
            for ep in eps:
                w.add_episode(ep, split)
    return Path(out_dir)
