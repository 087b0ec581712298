"""Per-dataset random-access index, built once (one CRC-checked pass) and cached.

For one (dataset directory, split, registry entry) the index holds
- per episode: shard, record byte offset, length, first transition, instruction;
- per transition: the standardized action and proprio (small; kept in memory — statistics and
  action chunks never touch the shards again);
- per transition and camera: the absolute byte range of the encoded image inside its shard, so a
  sample costs one `pread` per camera;
- per episode and other step feature (e.g. `latent_idx`, `latent_z`): the byte range of its packed
  list, read (and for float32 sliced to the needed steps) on demand.

Cache: `<builder dir>/.latentvla_cache/index-<key>.npz` when the directory is writable, else
`$LATENTVLA_CACHE_DIR` (default `~/.cache/latentvla`)/<name>-<version>-<pathhash>/. The key hashes
the shard names, sizes and mtimes plus the registry entry fields that shape the index, so editing
the data or the entry rebuilds it.

Latent labels the records carry but `features.json` does not declare (the paper's `latent.py`
output) are indexed like declared step keys, with a notice (`latentvla.data.latent_labels`).
Under torch.distributed rank 0 builds while the others wait; without it concurrent builders are
safe (atomic rename of identical content).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from latentvla.data.example import (
    BYTES,
    FeatureSpan,
    bytes_list_spans,
    decode_span,
    record_context,
    scan_example,
)
from latentvla.data.features import FeatureSpec
from latentvla.data.registry import ResolvedDataset, parse_key_slice
from latentvla.data.tfds import TFDSBuilderDir, episode_key, step_key
from latentvla.data.tfrecord import iter_records
from latentvla.errors import LatentVLAError

INDEX_FORMAT = 3
_HEADER = 12


def cache_dir(builder: TFDSBuilderDir) -> Path:
    local = builder.path / ".latentvla_cache"
    if local.is_dir() and os.access(local, os.W_OK) or not local.exists() and os.access(builder.path, os.W_OK):
        return local
    base = Path(os.environ.get("LATENTVLA_CACHE_DIR") or Path.home() / ".cache" / "latentvla")
    tag = hashlib.sha1(str(builder.path.resolve()).encode()).hexdigest()[:12]
    return base / f"{builder.name}-{builder.version}-{tag}"


def files_fingerprint(builder: TFDSBuilderDir, split: str) -> list:
    out = []
    for p in builder.shard_paths(split):
        st = p.stat()
        out.append([p.name, st.st_size, st.st_mtime_ns])
    for name in ("dataset_info.json", "features.json"):
        st = (builder.path / name).stat()
        out.append([name, st.st_size, st.st_mtime_ns])
    return out


def index_key(resolved: ResolvedDataset, builder: TFDSBuilderDir, split: str, undeclared=None) -> str:
    e = resolved.entry
    p = e.platform
    payload = {"format": INDEX_FORMAT, "split": split, "files": files_fingerprint(builder, split),
               "entry": [e.image_keys, e.proprio_keys, e.action_key, e.language_key, e.action_standardization],
               "platform": [p.action_dim, p.proprio_dim]}
    if undeclared is not None and undeclared.usable:  # indexed keys beyond features.json (keys of other data unchanged)
        payload["undeclared"] = sorted(undeclared.specs)
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def feature_path(builder: TFDSBuilderDir, key: str, what: str, name: str) -> str:
    """Schema path of a registry key: 'image' -> steps/observation/image or steps/image."""
    for cand in (step_key(key), f"steps/observation/{key}"):
        if cand in builder.specs and builder.specs[cand].in_steps:
            return cand
    steps = ", ".join(episode_key(k) for k, s in builder.specs.items() if s.in_steps)
    raise LatentVLAError(f"{builder.path / 'features.json'}: dataset {name!r} has no step feature {key!r} "
                         f"({what} in the registry entry); step features: {steps}")


def standardize_actions(actions: np.ndarray, standardization: str) -> np.ndarray:
    a = np.asarray(actions, np.float32).copy()
    if standardization == "libero_gripper":  # raw -1 open / +1 close -> 1 open, 0 close
        a[..., -1] = 1.0 - np.clip(a[..., -1], 0.0, 1.0)
    return a


@dataclass
class DatasetIndex:
    name: str
    path: Path
    split: str
    shard_files: list[str]
    ep_shard: np.ndarray  # int32 [E]
    ep_offset: np.ndarray  # int64 [E]
    ep_len: np.ndarray  # int32 [E]
    ep_start: np.ndarray  # int64 [E + 1]
    instructions: list[str]
    actions: np.ndarray  # float32 [N, D] standardized
    proprio: np.ndarray  # float32 [N, Pd]
    camera_keys: list[str]
    image_spans: np.ndarray  # int64 [N, C, 2] absolute offsets in the episode's shard
    step_keys: list[str]  # other step features with a byte-range per episode
    step_spans: np.ndarray  # int64 [E, K, 4] (start, end, kind, packed)
    specs: dict[str, FeatureSpec] = field(default_factory=dict)
    undeclared: Any = None  # latent_labels.UndeclaredLatents found beside features.json (not saved)

    @property
    def num_episodes(self) -> int:
        return len(self.ep_len)

    @property
    def num_transitions(self) -> int:
        return int(self.ep_start[-1])

    def locate(self, j: int) -> tuple[int, int]:
        """Transition j -> (episode, step)."""
        e = int(np.searchsorted(self.ep_start, j, side="right") - 1)
        return e, j - int(self.ep_start[e])

    def shard_path(self, episode: int) -> Path:
        return self.path / self.shard_files[int(self.ep_shard[episode])]

    def has_step_key(self, key: str) -> bool:
        return key in self.step_keys

    def episodes_lacking(self, key: str) -> np.ndarray:
        """Episodes whose record lacks step key `key` (declared, or adopted, but absent there)."""
        return np.flatnonzero(self.step_spans[:, self.step_keys.index(key), 2] < 0)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        from latentvla.utils.atomic import atomic_path

        meta = {"name": self.name, "split": self.split, "shard_files": self.shard_files,
                "instructions": self.instructions, "camera_keys": self.camera_keys, "step_keys": self.step_keys}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), ep_shard=self.ep_shard,
                         ep_offset=self.ep_offset, ep_len=self.ep_len, ep_start=self.ep_start, actions=self.actions,
                         proprio=self.proprio, image_spans=self.image_spans, step_spans=self.step_spans)

    @classmethod
    def load(cls, path: Path, builder: TFDSBuilderDir) -> DatasetIndex:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            arrays = {k: z[k] for k in ("ep_shard", "ep_offset", "ep_len", "ep_start", "actions", "proprio",
                                        "image_spans", "step_spans")}
        return cls(name=meta["name"], path=builder.path, split=meta["split"], shard_files=meta["shard_files"],
                   instructions=meta["instructions"], camera_keys=meta["camera_keys"], step_keys=meta["step_keys"],
                   specs=builder.specs, **arrays)


def _check_finite(arr: np.ndarray, what: str, shard: Path, offset: int, episode: int) -> None:
    if not np.isfinite(arr).all():
        t = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise LatentVLAError(f"{shard} (record at offset {offset}, episode {episode}): {what} has NaN/inf at step {t}")


def build_index(resolved: ResolvedDataset, split: str = "train", progress: bool = True,
                builder: TFDSBuilderDir | None = None) -> DatasetIndex:
    if builder is None:
        from latentvla.data.latent_labels import adopt_undeclared_latents

        builder = TFDSBuilderDir(resolved.path)
        adopt_undeclared_latents(builder)
    e = resolved.entry
    plat = e.platform
    name = e.name
    cams = [feature_path(builder, k, "camera", name) for k in e.image_keys]
    for k, c in zip(e.image_keys, cams, strict=True):
        if builder.specs[c].kind != "image":
            raise LatentVLAError(f"{builder.path / 'features.json'}: {c!r} (camera {k!r}) is not an Image feature")
    act_path = feature_path(builder, e.action_key, "action_key", name)
    act_spec = builder.specs[act_path]
    if act_spec.shape != (plat.action_dim,):
        raise LatentVLAError(f"{builder.path / 'features.json'}: dataset {name!r}: {episode_key(act_path)!r} has shape "
                             f"{list(act_spec.shape)} but platform {plat.name!r} expects action_dim {plat.action_dim}")
    prop_parts = []
    for spec_str in e.proprio_keys:
        key, sl = parse_key_slice(spec_str, f"dataset {name!r}")
        path = feature_path(builder, key, "proprio_keys", name)
        shape = builder.specs[path].shape
        width = len(range(*sl.indices(shape[0] if shape else 1)))
        prop_parts.append((path, sl, width))
    prop_dim = sum(w for _, _, w in prop_parts)
    if prop_dim != plat.proprio_dim:
        raise LatentVLAError(f"{builder.path / 'features.json'}: dataset {name!r}: proprio "
                             f"{list(e.proprio_keys)} gives {prop_dim} dims but platform {plat.name!r} expects "
                             f"proprio_dim {plat.proprio_dim}")
    lang_path = feature_path(builder, e.language_key, "language_key", name)
    other = [p for p, s in builder.specs.items() if s.in_steps and s.kind != "image" and p not in (lang_path,)]
    specs = builder.specs

    ep_shard, ep_offset, ep_len, instructions = [], [], [], []
    actions, proprio, image_spans, step_spans = [], [], [], []
    shards = builder.shard_paths(split)
    lengths = builder.shard_lengths(split)
    bar = tqdm(total=sum(lengths), desc=f"indexing {name} ({split})", unit="ep", disable=not progress, leave=False)
    ep_idx = 0
    for si, (shard, n_expected) in enumerate(zip(shards, lengths, strict=True)):
        count = 0
        for offset, data in iter_records(shard):
            where = f"{shard} (record at offset {offset}, episode {ep_idx})"
            with record_context(where):  # a garbage payload (CRCs fine) is named by shard and offset
                spans = scan_example(data)
                for p in [*cams, act_path, lang_path, *[p for p, _, _ in prop_parts]]:
                    if p not in spans:
                        raise LatentVLAError(f"{where}: feature {p!r} is missing from the record")
                a = decode_span(data, spans[act_path])
                if a.size % plat.action_dim:
                    raise LatentVLAError(f"{where}: {act_path!r} has {a.size} values, not a multiple of "
                                         f"{plat.action_dim}")
                T = a.size // plat.action_dim
                a = a.reshape(T, plat.action_dim)
                _check_finite(a, "action", shard, offset, ep_idx)
                parts = []
                for path, sl, _ in prop_parts:
                    v = decode_span(data, spans[path]).astype(np.float32)
                    numel = specs[path].numel
                    if v.size != T * numel:
                        raise LatentVLAError(f"{where}: {path!r} has {v.size} values, expected {T} steps x {numel}")
                    parts.append(v.reshape(T, numel)[:, sl])
                pr = np.concatenate(parts, 1) if parts else np.zeros((T, 0), np.float32)
                _check_finite(pr, "proprio", shard, offset, ep_idx)
                cam_spans = []
                for c in cams:
                    items = bytes_list_spans(data, spans[c])
                    if len(items) != T:
                        raise LatentVLAError(f"{where}: {c!r} has {len(items)} images for {T} steps")
                    cam_spans.append(np.asarray(items, np.int64).reshape(T, 2) + offset + _HEADER)
                lang_items = bytes_list_spans(data, spans[lang_path])
                instr = data[lang_items[0][0]:lang_items[0][1]].decode("utf-8", errors="replace") if lang_items else ""
                row = np.zeros((len(other), 4), np.int64)
                for k, p in enumerate(other):
                    s = spans.get(p, FeatureSpan(BYTES, 0, 0))
                    row[k] = ((s.start + offset + _HEADER, s.end + offset + _HEADER, s.kind, int(s.packed))
                              if p in spans else (0, 0, -1, 0))
            ep_shard.append(si)
            ep_offset.append(offset)
            ep_len.append(T)
            instructions.append(instr)
            actions.append(standardize_actions(a, e.action_standardization))
            proprio.append(pr.astype(np.float32))
            image_spans.append(np.stack(cam_spans, 1) if cams else np.zeros((T, 0, 2), np.int64))
            step_spans.append(row)
            count += 1
            ep_idx += 1
            bar.update(1)
        if count != n_expected:
            raise LatentVLAError(f"{shard}: holds {count} records but dataset_info.json says {n_expected}")
    bar.close()
    ep_len_arr = np.asarray(ep_len, np.int32)
    if ep_len_arr.sum() == 0:
        raise LatentVLAError(f"{resolved.path}: dataset {name!r} split {split!r} is empty ({len(ep_len)} "
                             "episodes, 0 transitions)")
    D, Pd, C = plat.action_dim, prop_dim, len(cams)
    return DatasetIndex(
        name=name, path=builder.path, split=split, shard_files=[p.name for p in shards],
        ep_shard=np.asarray(ep_shard, np.int32), ep_offset=np.asarray(ep_offset, np.int64), ep_len=ep_len_arr,
        ep_start=np.concatenate([[0], np.cumsum(ep_len_arr)]).astype(np.int64), instructions=instructions,
        actions=np.concatenate(actions) if actions else np.zeros((0, D), np.float32),
        proprio=np.concatenate(proprio) if proprio else np.zeros((0, Pd), np.float32),
        camera_keys=[episode_key(c) for c in cams],
        image_spans=np.concatenate(image_spans) if image_spans else np.zeros((0, C, 2), np.int64),
        step_keys=[episode_key(p) for p in other],
        step_spans=np.stack(step_spans) if step_spans else np.zeros((0, len(other), 4), np.int64), specs=specs)


def _dist_rank() -> tuple[int, bool]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), True
    except Exception:  # torch missing or not initialised: single process
        pass
    return 0, False


def load_or_build_index(resolved: ResolvedDataset, split: str = "train", progress: bool = True,
                        sync: bool = True) -> DatasetIndex:
    """The cached index (built on first use). With torch.distributed initialised and `sync`, rank 0
    builds while the others wait at a barrier — every rank must then make the same calls."""
    from latentvla.data.latent_labels import adopt_undeclared_latents

    builder = TFDSBuilderDir(resolved.path)
    if split not in builder.split_names:
        raise LatentVLAError(f"{resolved.path / 'dataset_info.json'}: dataset {resolved.name!r} has no "
                             f"split {split!r}; splits: {', '.join(builder.split_names) or '(none)'}")
    if builder.num_episodes(split) == 0:
        raise LatentVLAError(f"{resolved.path}: dataset {resolved.name!r} split {split!r} is empty (0 episodes)")
    undeclared = adopt_undeclared_latents(builder)  # the paper's latent.py output: labels not in features.json
    path = cache_dir(builder) / f"index-{index_key(resolved, builder, split, undeclared)}.npz"
    rank, distributed = _dist_rank()
    distributed = distributed and sync
    if distributed and rank != 0:
        import torch.distributed as dist

        dist.barrier()  # rank 0 builds first
    if path.is_file():
        try:
            idx = DatasetIndex.load(path, builder)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            idx = None
        if idx is not None:
            if distributed and rank == 0:
                import torch.distributed as dist

                dist.barrier()
            idx.undeclared = undeclared
            return idx
    idx = build_index(resolved, split, progress=progress and rank == 0, builder=builder)
    idx.undeclared = undeclared
    try:
        idx.save(path)
    except OSError:
        pass  # read-only everywhere: the index still works, it is just not cached
    if distributed and rank == 0:
        import torch.distributed as dist

        dist.barrier()
    return idx
