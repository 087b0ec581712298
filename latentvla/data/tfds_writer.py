"""TFDS builder-directory writer: `TFDSWriter` and episode -> tf.train.Example encoding.

See `latentvla.data.tfds` (module doc) for the API; everything here is re-exported there.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.data.example import encode_example
from latentvla.data.features import FeatureSpec, as_flat, build_features_json
from latentvla.data.staging import StagedDirWriter
from latentvla.data.tfds import DEFAULT_TEMPLATE, episode_key, shard_filename, step_key
from latentvla.data.tfrecord import RecordWriter
from latentvla.errors import LatentVLAError


def encode_image(img: np.ndarray, encoding: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    arr = np.asarray(img, dtype=np.uint8)
    pil = Image.fromarray(arr.squeeze(-1) if img.shape[-1] == 1 else arr)
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
                    raise LatentVLAError(f"{where}: image {episode_key(path)!r} has shape {val.shape}, expected [T, "
                                         f"{', '.join(map(str, spec.shape))}]")
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
                    raise LatentVLAError(f"{where}: feature {episode_key(path)!r} has shape {list(arr.shape)}, "
                                         f"expected [T, {', '.join(map(str, spec.shape))}]")
                n = arr.shape[0]
            else:
                if arr.shape != spec.shape and arr.size != spec.numel:
                    raise LatentVLAError(f"{where}: feature {path!r} has shape {list(arr.shape)}, expected "
                                         f"{list(spec.shape)}")
                n = 1
            if spec.storage == "float":
                val = arr.astype(np.float32)
            else:
                val = arr.astype(np.int64)
        if spec.in_steps:
            if num_steps is None:
                num_steps = n
            elif n != num_steps:
                raise LatentVLAError(f"{where}: feature {episode_key(path)!r} has {n} steps, other step features "
                                     f"have {num_steps}")
        feats[path] = val
    return encode_example(feats)


class TFDSWriter(StagedDirWriter):
    """Write a TFDS builder directory that `tfds.builder_from_directory` loads unchanged."""

    def __init__(self, out_dir: str | os.PathLike, features: Mapping, splits: Sequence[str] = ("train",),
                 *, max_shard_bytes: int = 256 << 20, overwrite: bool = False, name: str | None = None,
                 version: str | None = None, description: str = ""):
        self.out_dir = Path(out_dir)
        self.name = name or self.out_dir.parent.name
        self.version = version or self.out_dir.name
        if len(self.version.split(".")) != 3:
            raise LatentVLAError(f"TFDSWriter: {self.out_dir}: the last path component must be a version like 1.0.0")
        self._stage(self.out_dir, overwrite)
        self.specs = as_flat(features)
        self.features_json = build_features_json(self.specs)
        self.splits = list(splits)
        self.max_shard_bytes = int(max_shard_bytes)
        self.description = description
        # (tmp file, n, payload bytes)
        self._shards: dict[str, list[tuple[Path, int, int]]] = {s: [] for s in self.splits}
        self._payload_bytes: dict[str, int] = {s: 0 for s in self.splits}
        self._writer: dict[str, RecordWriter | None] = {s: None for s in self.splits}
        self._counts: dict[str, int] = {s: 0 for s in self.splits}

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

    def _finish(self) -> None:
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

    def _release(self) -> None:
        for w in self._writer.values():
            if w is not None:
                w.abort()

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)


def write_tfds_dataset(out_dir: str | os.PathLike, features: Mapping,
                       episodes: Iterable[Mapping] | Mapping[str, Iterable[Mapping]], **kw) -> Path:
    """Convenience: write all `episodes` (an iterable for "train", or {split: iterable})."""
    by_split = episodes if isinstance(episodes, Mapping) else {"train": episodes}
    with TFDSWriter(out_dir, features, splits=list(by_split), **kw) as w:
        for split, eps in by_split.items():
            for ep in eps:
                w.add_episode(ep, split)
    return Path(out_dir)
