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

import numpy as np
from tqdm import tqdm

from latentvla.data.example import (
    BYTES,
    FLOAT,
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


def cache_dir(root: Path, label: str) -> Path:
    """`<root>/.latentvla_cache` when writable, else `$LATENTVLA_CACHE_DIR`/<label>-<hash of root>."""
    local = root / ".latentvla_cache"
    if local.is_dir() and os.access(local, os.W_OK) or not local.exists() and os.access(root, os.W_OK):
        return local
    base = Path(os.environ.get("LATENTVLA_CACHE_DIR") or Path.home() / ".cache" / "latentvla")
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return base / f"{label}-{tag}"


def cache_key(resolved: ResolvedDataset, split: str, files: list, version: int, **extra) -> str:
    """Hash of the data files' fingerprint and the registry entry fields that shape an index."""
    e, p = resolved.entry, resolved.entry.platform
    payload = {"format": version, "split": split, "files": files,
               "entry": [e.image_keys, e.proprio_keys, e.action_key, e.language_key, e.action_standardization],
               "platform": [p.action_dim, p.proprio_dim], **extra}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def rlds_cache(resolved: ResolvedDataset, builder: TFDSBuilderDir, split: str, undeclared=None) -> tuple[Path, str]:
    """(cache directory, key) of (dataset, split); the index and the statistics are cached under that key."""
    files = []
    for p in [*builder.shard_paths(split), builder.path / "dataset_info.json", builder.path / "features.json"]:
        st = p.stat()
        files.append([p.name, st.st_size, st.st_mtime_ns])
    extra = {}
    if undeclared is not None and undeclared.usable:  # indexed keys beyond features.json (keys of other data unchanged)
        extra["undeclared"] = sorted(undeclared.specs)
    return (cache_dir(builder.path, f"{builder.name}-{builder.version}"),
            cache_key(resolved, split, files, INDEX_FORMAT, **extra))


def entry_layout(entry, where: str, find, shape_of) -> tuple[list[str], str, list[tuple[str, slice]]]:
    """(camera features, action feature, proprio parts [(feature, slice)]) of a registry entry, checked
    against its platform; `find(key, what)` names the feature of a key, `shape_of(feature)` its shape."""
    plat, name = entry.platform, entry.name
    cams = [find(k, "image_keys") for k in entry.image_keys]
    act = find(entry.action_key, "action_key")
    if list(shape_of(act)) != [plat.action_dim]:
        raise LatentVLAError(f"{where}: dataset {name!r}: {episode_key(act)!r} has shape {list(shape_of(act))} but "
                             f"platform {plat.name!r} expects action_dim {plat.action_dim}")
    prop = []
    for spec in entry.proprio_keys:
        key, sl = parse_key_slice(spec, f"dataset {name!r}")
        prop.append((find(key, "proprio_keys"), sl))
    dims = sum(len(range(*sl.indices(int(np.prod(shape_of(p) or [1]))))) for p, sl in prop)
    if dims != plat.proprio_dim:
        raise LatentVLAError(f"{where}: dataset {name!r}: proprio {list(entry.proprio_keys)} gives {dims} dims but "
                             f"platform {plat.name!r} expects proprio_dim {plat.proprio_dim}")
    return cams, act, prop


def episode_starts(lengths: list[int], where, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(ep_len int32 [E], ep_start int64 [E + 1]); a split without transitions is refused."""
    ep_len = np.asarray(lengths, np.int32)
    if ep_len.sum() == 0:
        raise LatentVLAError(f"{where}: dataset {name!r} split {split!r} is empty ({len(ep_len)} episodes, 0 "
                             "transitions)")
    return ep_len, np.concatenate([[0], np.cumsum(ep_len)]).astype(np.int64)


def open_split(resolved: ResolvedDataset, split: str) -> TFDSBuilderDir:
    """The builder dir of `resolved`, which must have `split`."""
    builder = TFDSBuilderDir(resolved.path)
    if split not in builder.split_names:
        raise LatentVLAError(f"{resolved.path / 'dataset_info.json'}: dataset {resolved.name!r} has no "
                             f"split {split!r}; splits: {', '.join(builder.split_names) or '(none)'}")
    return builder


def check_finite(arr: np.ndarray, what: str, where: str) -> None:
    if not np.isfinite(arr).all():
        t = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise LatentVLAError(f"{where}: {what} has NaN/inf at step {t}")


def feature_path(builder: TFDSBuilderDir, key: str, what: str, name: str) -> str:
    """Schema path of a registry key: 'image' -> steps/observation/image or steps/image."""
    for cand in (step_key(key), f"steps/observation/{key}"):
        if cand in builder.specs and builder.specs[cand].in_steps:
            return cand
    steps = ", ".join(episode_key(k) for k, s in builder.specs.items() if s.in_steps)
    raise LatentVLAError(f"{builder.path / 'features.json'}: dataset {name!r} has no step feature {key!r} "
                         f"({what} in the registry entry); step features: {steps}")


def rlds_layout(entry, builder: TFDSBuilderDir) -> tuple[list[str], str, list[tuple[str, slice]]]:
    """`entry_layout` of a registry entry in a builder dir (step paths)."""
    return entry_layout(entry, str(builder.path / "features.json"),
                        lambda k, what: feature_path(builder, k, what, entry.name), lambda p: builder.specs[p].shape)


def standardize_actions(actions: np.ndarray, standardization: str) -> np.ndarray:
    a = np.asarray(actions, np.float32).copy()
    if standardization == "libero_gripper":  # raw -1 open / +1 close -> 1 open, 0 close
        a[..., -1] = 1.0 - np.clip(a[..., -1], 0.0, 1.0)
    return a


@dataclass
class IndexBase:
    """What both index kinds share (`latentvla.data.store` lists the interface); subclasses name the
    fields saved in the npz as `_META` (JSON) and `_ARRAYS`."""

    name: str
    path: Path
    split: str
    ep_len: np.ndarray  # int32 [E]
    ep_start: np.ndarray  # int64 [E + 1]
    instructions: list[str]
    actions: np.ndarray  # float32 [N, D] standardized
    proprio: np.ndarray  # float32 [N, Pd]
    camera_keys: list[str]
    step_keys: list[str]  # other per-step features (e.g. latent_idx)

    _META = ()
    _ARRAYS = ()
    undeclared = None  # RLDS: latent_labels.UndeclaredLatents found beside features.json (not saved)

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

    def has_step_key(self, key: str) -> bool:
        return key in self.step_keys

    def save(self, path: Path) -> None:
        from latentvla.utils.atomic import atomic_path

        meta = json.dumps({k: getattr(self, k) for k in self._META}).encode()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(meta, np.uint8), **{k: getattr(self, k) for k in self._ARRAYS})

    @classmethod
    def load(cls, path: Path, root: Path, **fields):
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            arrays = {k: z[k] for k in cls._ARRAYS}
        return cls(path=root, **meta, **arrays, **fields)


def load_or_build_cached(path: Path, load, build, sync: bool):
    """`load()` the index cached at `path`, else `build(rank0)` (rank0: show progress) and cache it. With
    torch.distributed initialised and `sync`, rank 0 builds while the others wait at a barrier (every rank
    must then make the same calls)."""
    rank, distributed = _dist_rank()
    distributed = distributed and sync
    if distributed and rank != 0:
        import torch.distributed as dist

        dist.barrier()  # rank 0 builds first
    idx = None
    if path.is_file():
        try:
            idx = load()
        except Exception:  # a damaged cache file is rebuilt, never trusted
            idx = None
    if idx is None:
        idx = build(rank == 0)
        try:
            idx.save(path)
        except OSError:
            pass  # read-only everywhere: the index still works, it is just not cached
    if distributed and rank == 0:
        import torch.distributed as dist

        dist.barrier()
    return idx


@dataclass
class DatasetIndex(IndexBase):
    shard_files: list[str]
    ep_shard: np.ndarray  # int32 [E]
    ep_offset: np.ndarray  # int64 [E]
    image_spans: np.ndarray  # int64 [N, C, 2] absolute offsets in the episode's shard
    step_spans: np.ndarray  # int64 [E, K, 4] (start, end, kind, packed)
    specs: dict[str, FeatureSpec] = field(default_factory=dict)

    format = "rlds"
    _META = ("name", "split", "shard_files", "instructions", "camera_keys", "step_keys")
    _ARRAYS = ("ep_shard", "ep_offset", "ep_len", "ep_start", "actions", "proprio", "image_spans", "step_spans")

    def shard_path(self, episode: int) -> Path:
        return self.path / self.shard_files[int(self.ep_shard[episode])]

    def episodes_lacking(self, key: str) -> np.ndarray:
        """Episodes whose record lacks step key `key` (declared, or adopted, but absent there)."""
        return np.flatnonzero(self.step_spans[:, self.step_keys.index(key), 2] < 0)

    def where(self, episode: int) -> Path:
        return self.shard_path(episode)

    # ------------------------------------------------------------------ reading (one pread per camera)
    def read_frames(self, e: int, steps, cameras, handles) -> list[bytes]:
        path, s = self.shard_path(e), int(self.ep_start[e])
        spans = [self.image_spans[s + t, c] for t, c in zip(steps, cameras, strict=False)]
        return [handles.pread(path, int(a), int(b)) for a, b in spans]

    def read_step_feature(self, e: int, t: int, length: int, key: str, handles) -> np.ndarray:
        k = self.step_keys.index(key)
        start, end, kind, packed = (int(v) for v in self.step_spans[e, k])
        spec = self.specs["steps/" + key]
        T = int(self.ep_len[e])
        path = self.shard_path(e)
        if kind < 0:
            raise LatentVLAError(f"dataset {self.name!r} ({path}) episode {e}: record lacks {key!r}")
        if kind == FLOAT and packed:  # fixed width: read just the needed steps
            w = spec.numel * 4
            rows = [min(t + j, T - 1) for j in range(length)]
            lo, hi = rows[0], rows[-1] + 1
            buf = handles.pread(path, start + lo * w, start + hi * w)
            vals = np.frombuffer(buf, "<f4").reshape(hi - lo, *spec.shape)
            return vals[np.asarray(rows) - lo]
        buf = handles.pread(path, start, end)
        with record_context(f"{path} (record at offset {int(self.ep_offset[e])}, episode {e})"):
            vals = np.asarray(decode_span(buf, FeatureSpan(kind, 0, len(buf), bool(packed))))
        if vals.size != T * spec.numel:
            raise LatentVLAError(f"dataset {self.name!r} ({path}) episode {e}: {key!r} has {vals.size} values, "
                                 f"expected {T} steps x {spec.numel}")
        return vals.reshape(T, *spec.shape)[np.minimum(np.arange(t, t + length), T - 1)]


def build_index(resolved: ResolvedDataset, builder: TFDSBuilderDir, split: str, progress: bool) -> DatasetIndex:
    e = resolved.entry
    plat, name, specs = e.platform, e.name, builder.specs
    cams, act_path, prop = rlds_layout(e, builder)
    for k, c in zip(e.image_keys, cams, strict=True):
        if specs[c].kind != "image":
            raise LatentVLAError(f"{builder.path / 'features.json'}: {c!r} (camera {k!r}) is not an Image feature")
    lang_path = feature_path(builder, e.language_key, "language_key", name)
    other = [p for p, s in specs.items() if s.in_steps and s.kind != "image" and p not in (lang_path,)]

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
                for p in [*cams, act_path, lang_path, *[p for p, _ in prop]]:
                    if p not in spans:
                        raise LatentVLAError(f"{where}: feature {p!r} is missing from the record")
                a = decode_span(data, spans[act_path])
                if a.size % plat.action_dim:
                    raise LatentVLAError(f"{where}: {act_path!r} has {a.size} values, not a multiple of "
                                         f"{plat.action_dim}")
                T = a.size // plat.action_dim
                a = a.reshape(T, plat.action_dim)
                check_finite(a, "action", where)
                parts = []
                for path, sl in prop:
                    v = decode_span(data, spans[path]).astype(np.float32)
                    numel = specs[path].numel
                    if v.size != T * numel:
                        raise LatentVLAError(f"{where}: {path!r} has {v.size} values, expected {T} steps x {numel}")
                    parts.append(v.reshape(T, numel)[:, sl])
                pr = np.concatenate(parts, 1) if parts else np.zeros((T, 0), np.float32)
                check_finite(pr, "proprio", where)
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
    ep_len_arr, ep_start = episode_starts(ep_len, resolved.path, name, split)
    return DatasetIndex(
        name=name, path=builder.path, split=split, shard_files=[p.name for p in shards],
        ep_shard=np.asarray(ep_shard, np.int32), ep_offset=np.asarray(ep_offset, np.int64), ep_len=ep_len_arr,
        ep_start=ep_start, instructions=instructions, actions=np.concatenate(actions),
        proprio=np.concatenate(proprio), camera_keys=[episode_key(c) for c in cams],
        image_spans=np.concatenate(image_spans), step_keys=[episode_key(p) for p in other],
        step_spans=np.stack(step_spans), specs=specs)


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
    """The cached index (built on first use; see `load_or_build_cached` for torch.distributed)."""
    from latentvla.data.latent_labels import adopt_undeclared_latents

    builder = open_split(resolved, split)
    if builder.num_episodes(split) == 0:
        raise LatentVLAError(f"{resolved.path}: dataset {resolved.name!r} split {split!r} is empty (0 episodes)")
    undeclared = adopt_undeclared_latents(builder)  # the paper's latent.py output: labels not in features.json
    folder, key = rlds_cache(resolved, builder, split, undeclared)
    path = folder / f"index-{key}.npz"
    idx = load_or_build_cached(path, lambda: DatasetIndex.load(path, builder.path, specs=builder.specs),
                               lambda rank0: build_index(resolved, builder, split, progress and rank0), sync)
    idx.undeclared = undeclared
    return idx
