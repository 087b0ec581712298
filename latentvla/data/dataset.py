"""Map-style torch datasets over a data mix: VLA samples, action chunks, frame pairs (docs/architecture.md §3).

    ds = VLADataset(data_root_dir, data_mix, image_size=224, train=True, image_aug=True,
                    use_wrist_image=True, use_proprio=True, window_size=None, extra_keys=(),
                    seed=42, split="train", dataset_registry=None)
    ds.platform, ds.statistics ({name: stats}), len(ds) = transitions, ds[i] -> sample dict

Sample (index i = (dataset, episode, step t)):
  "images" uint8 [num_cameras, S, S, 3] (primary first; only the primary with use_wrist_image=False)
  "instruction" str (lower-cased, stripped)
  "proprio" float32 [proprio_dim] normalized ([0] with use_proprio=False)
  "actions" float32 [P, D] normalized steps t..t+P-1; "action_pad" bool [P] (True = past the end).
      Padding is done in robot units before normalizing: absolute dims repeat the last action,
      delta dims are 0 (no motion).
  "latent_idx" int64 [P, C], "latent_z" float32 [P, C, Z] (only if in extra_keys; padded by
      repeating the last step). Any other per-step key of the dataset can be requested the same way.
  "dataset_name" str, "episode" int, "step" int
`resample`: "bicubic" (default) / "bilinear" (antialiased, torch uint8 kernels) or "lanczos" (PIL, the
reference pipeline's; ~8x slower per image); training records it as the checkpoint's `image_resample`
and inference resizes the same way (`transforms.process_image`).

Annotated data: with extra_keys, a dataset whose directory lacks them is replaced by its sibling
`<dir>_latent/<version>` when that exists (`latentvla lam annotate` output); `--data_mix
libero_goal_latent` names it explicitly. Labels the records carry but features.json does not
declare (the paper's latent.py output) are used with a notice (`latentvla.data.latent_labels`);
codes stored as floats are checked integral and >= 0 (and < K for undeclared ones). Missing
everywhere, or missing from some episodes -> LatentVLAError naming the dataset and the key.
Statistics always come from the train split, keyed by the base dataset name.

ActionChunkDataset: same index, no images: {"actions", "action_pad", "dataset_name", "episode", "step"}.
FramePairDataset(pair_offset=k): {"frames" uint8 [2, S, S, 3] (primary at t and min(t+k, T-1)),
  "actions" [k, D], "action_pad" [k], "instruction", "dataset_name", "episode", "step"}.

Reading goes through the storage seam (`latentvla.data.store`): RLDS costs one `pread` per camera
(byte ranges from the cached index), LeRobot one decode from the preceding keyframe per camera
(frames cached within the GOP). Files are opened lazily per process (`latentvla.data.handles`),
so DataLoader workers (fork or spawn) each use their own handles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from latentvla.data.handles import Handles
from latentvla.data.registry import ResolvedDataset, latent_sibling, latent_sibling_path, resolve_data_mix
from latentvla.data.statistics import load_or_compute_statistics
from latentvla.data.store import load_or_build_store
from latentvla.data.transforms import (
    DEFAULT_RESAMPLE,
    ImageDecodeError,
    check_resample,
    process_frames,
    sample_augment_params,
)
from latentvla.errors import LatentVLAError
from latentvla.robots import Platform, normalize
from latentvla.utils.seeding import derive_seed

try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object


class _MixDataset(_TorchDataset):
    """Shared machinery: resolve the mix, load indexes and statistics, map i -> (d, e, t)."""

    def __init__(self, data_root_dir, data_mix, *, seed: int = 42, split: str = "train", dataset_registry=None,
                 extra_keys: Sequence[str] = (), progress: bool = True):
        self.data_root_dir, self.data_mix, self.seed, self.split = data_root_dir, data_mix, int(seed), split
        self.epoch = 0
        resolved = resolve_data_mix(data_root_dir, data_mix, dataset_registry)
        platforms = sorted({r.entry.platform_name for r in resolved})
        if len(platforms) > 1:
            raise LatentVLAError(f"--data_mix {data_mix}: datasets use different platforms ({', '.join(platforms)}); "
                                 "one run trains one platform: "
                                 f"{', '.join(f'{r.name}={r.entry.platform_name}' for r in resolved)}")
        self.platform: Platform = resolved[0].entry.platform
        self.extra_keys = tuple(extra_keys)
        self.resolved: list[ResolvedDataset] = []
        self.indexes: list = []  # DatasetIndex (RLDS) | LeRobotIndex, see latentvla.data.store
        for r in resolved:
            idx = load_or_build_store(r, split, progress=progress)
            missing = [k for k in self.extra_keys if not idx.has_step_key(k)]
            if missing:
                sib = latent_sibling(r)
                if sib is not None:
                    sidx = load_or_build_store(sib, split, progress=progress)
                    if all(sidx.has_step_key(k) for k in self.extra_keys):
                        r, idx, missing = sib, sidx, []
            if missing:
                problem = getattr(idx.undeclared, "problem", None)  # labels in the records that cannot be used
                raise LatentVLAError(problem or (
                    f"dataset {r.name!r} ({r.path}) lacks per-step key(s) {', '.join(map(repr, missing))} needed here "
                    f"(extra_keys={list(self.extra_keys)}); annotate it with `latentvla lam annotate` (writes "
                    f"{latent_sibling_path(r.path)}) or use a variant that does not need latent labels"))
            for k in self.extra_keys:
                lacking = idx.episodes_lacking(k)
                if len(lacking):  # e.g. the paper's latent.py run on some of the shards only
                    e0 = int(lacking[0])
                    raise LatentVLAError(
                        f"dataset {r.name!r} ({r.path}): {len(lacking)} of {idx.num_episodes} episodes "
                        f"lack per-step key {k!r} (first: episode {e0} in {idx.where(e0).name}); "
                        "annotate every shard, or the whole dataset with `latentvla lam annotate`")
            self.resolved.append(r)
            self.indexes.append(idx)
        self.statistics: dict[str, dict] = {r.name: load_or_compute_statistics(r, "train", progress)
                                            for r in self.resolved}
        self.dataset_lengths = [ix.num_transitions for ix in self.indexes]
        self.dataset_weights = [r.weight for r in self.resolved]
        self._starts = np.concatenate([[0], np.cumsum(self.dataset_lengths)]).astype(np.int64)
        self._handles = Handles()  # per-process open files (pickles empty, fork-safe)

    # ------------------------------------------------------------------ plumbing
    def __len__(self) -> int:
        return int(self._starts[-1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _read(self, path, start: int, end: int) -> bytes:
        return self._handles.pread(path, start, end)

    def locate(self, i: int) -> tuple[int, int, int]:
        """Global transition i -> (dataset, episode, step)."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"transition {i} out of range [0, {len(self)})")
        d = int(np.searchsorted(self._starts, i, side="right") - 1)
        e, t = self.indexes[d].locate(i - int(self._starts[d]))
        return d, e, t

    def _epoch_of(self, i) -> int:
        return getattr(i, "epoch", self.epoch)

    # ------------------------------------------------------------------ pieces of a sample
    def action_chunk(self, d: int, e: int, t: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        idx, plat = self.indexes[d], self.platform
        s, T = int(idx.ep_start[e]), int(idx.ep_len[e])
        n = max(0, min(length, T - t))
        raw = idx.actions[s + t: s + t + n]
        if n < length:
            pad = np.zeros((length - n, plat.action_dim), np.float32)
            dims = list(plat.absolute_action_dims)
            if dims:
                pad[:, dims] = idx.actions[s + T - 1, dims]
            raw = np.concatenate([raw, pad], 0)
        stats = self.statistics[self.resolved[d].name]["action"]
        return normalize(raw, stats, plat.action_norm_mask, plat.normalization), np.arange(length) >= n

    def proprio(self, d: int, e: int, t: int) -> np.ndarray:
        idx, plat = self.indexes[d], self.platform
        row = idx.proprio[int(idx.ep_start[e]) + t]
        return normalize(row, self.statistics[self.resolved[d].name]["proprio"], plat.proprio_norm_mask,
                         plat.normalization)

    def instruction(self, d: int, e: int) -> str:
        return self.indexes[d].instructions[e].strip().lower()

    resample = DEFAULT_RESAMPLE

    def frames(self, d: int, e: int, steps: Sequence[int], cameras: Sequence[int], size: int, params) -> np.ndarray:
        """uint8 [N, S, S, 3] for the (step, camera) pairs, one augmentation draw for all of them."""
        idx = self.indexes[d]
        data = idx.read_frames(e, steps, cameras, self._handles)
        try:
            return process_frames(data, size, params, self.resample)
        except ImageDecodeError as err:
            k = getattr(err, "frame", 0)
            raise LatentVLAError(f"dataset {idx.name!r} ({idx.where(e)}) episode {e} step {steps[k]} camera "
                                 f"{idx.camera_keys[cameras[k]]!r}: {err}") from None

    def step_feature(self, d: int, e: int, t: int, length: int, key: str) -> np.ndarray:
        """Per-step feature `key` for steps t..t+length-1 (past the end: the last step repeated)."""
        idx = self.indexes[d]
        out = idx.read_step_feature(e, t, length, key, self._handles)
        if not np.isfinite(out).all():
            raise LatentVLAError(f"dataset {idx.name!r} ({idx.where(e)}) episode {e}: {key!r} has NaN/inf near "
                                 f"step {t}")
        return out

    def base_sample(self, d: int, e: int, t: int) -> dict[str, Any]:
        return {"dataset_name": self.resolved[d].name, "episode": e, "step": t}


class VLADataset(_MixDataset):
    def __init__(self, data_root_dir, data_mix, *, image_size: int = 224, train: bool = True, image_aug: bool = True,
                 use_wrist_image: bool = True, use_proprio: bool = True, window_size: int | None = None,
                 extra_keys: Sequence[str] = (), seed: int = 42, split: str = "train", dataset_registry=None,
                 progress: bool = True, resample: str = DEFAULT_RESAMPLE):
        if int(image_size) < 8:
            raise LatentVLAError(f"image_size must be >= 8, got {image_size}")
        super().__init__(data_root_dir, data_mix, seed=seed, split=split, dataset_registry=dataset_registry,
                         extra_keys=extra_keys, progress=progress)
        P = self.platform.chunk_len
        if window_size is not None and int(window_size) != P:
            raise LatentVLAError(f"--window_size {window_size} does not match the chunk length {P} of platform "
                                 f"{self.platform.name!r} (dataset {self.resolved[0].name!r}); use --window_size {P}")
        self.chunk_len = P
        self.image_size = int(image_size)
        self.resample = check_resample(resample)
        self.train, self.image_aug = bool(train), bool(image_aug)
        self.use_wrist_image, self.use_proprio = bool(use_wrist_image), bool(use_proprio)
        if self.use_wrist_image:
            for r, ix in zip(self.resolved, self.indexes, strict=True):
                if len(ix.camera_keys) < self.platform.num_cameras:
                    raise LatentVLAError(
                        f"dataset {r.name!r}: its registry entry lists {len(ix.camera_keys)} camera(s) "
                        f"{ix.camera_keys} but platform {self.platform.name!r} uses {self.platform.num_cameras}; add "
                        "image_keys or pass --use_wrist_image False")
        self.num_cameras = self.platform.num_cameras if self.use_wrist_image else 1

    def __getitem__(self, i) -> dict[str, Any]:
        d, e, t = self.locate(i)
        params = None
        if self.train and self.image_aug:
            seed = derive_seed(self.seed, self._epoch_of(i), int(i)) % (2**63)
            params = sample_augment_params(np.random.default_rng(seed))
        images = self.frames(d, e, [t] * self.num_cameras, range(self.num_cameras), self.image_size, params)
        actions, pad = self.action_chunk(d, e, t, self.chunk_len)
        sample = {
            "images": images,
            "instruction": self.instruction(d, e),
            "proprio": self.proprio(d, e, t) if self.use_proprio else np.zeros(0, np.float32),
            "actions": actions,
            "action_pad": pad,
            **self.base_sample(d, e, t),
        }
        for key in self.extra_keys:
            v = self.step_feature(d, e, t, self.chunk_len, key)
            if key == "latent_idx" and v.dtype.kind == "f":  # the paper's files store codes as floats
                self._check_float_codes(v, d, e, t)
            sample[key] = v.astype(np.int64) if key == "latent_idx" else v.astype(np.float32, copy=False)
        return sample

    def _check_float_codes(self, v: np.ndarray, d: int, e: int, t: int) -> None:
        from latentvla.data.latent_labels import check_codes

        idx = self.indexes[d]
        und = idx.undeclared
        limit = und.codebook_size if und is not None and und.usable and "steps/latent_idx" in und.specs else None
        check_codes(v, limit, f"dataset {idx.name!r} ({idx.where(e)}) episode {e} near step {t}", idx.path)


class ActionChunkDataset(_MixDataset):
    def __init__(self, data_root_dir, data_mix, *, chunk_len: int | None = None, seed: int = 42, split: str = "train",
                 dataset_registry=None, train: bool = True, progress: bool = True):
        super().__init__(data_root_dir, data_mix, seed=seed, split=split, dataset_registry=dataset_registry,
                         progress=progress)
        self.chunk_len = int(chunk_len or self.platform.chunk_len)
        self.train = train

    def __getitem__(self, i) -> dict[str, Any]:
        d, e, t = self.locate(i)
        actions, pad = self.action_chunk(d, e, t, self.chunk_len)
        return {"actions": actions, "action_pad": pad, **self.base_sample(d, e, t)}

    def all_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """Every transition's chunk: ([N, P, D], [N, P]) (for small mixes / evaluation)."""
        out_a, out_p = [], []
        for i in range(len(self)):
            s = self[i]
            out_a.append(s["actions"])
            out_p.append(s["action_pad"])
        return np.stack(out_a), np.stack(out_p)


class FramePairDataset(_MixDataset):
    def __init__(self, data_root_dir, data_mix, *, pair_offset: int = 32, image_size: int = 224, train: bool = True,
                 image_aug: bool = False, seed: int = 42, split: str = "train", dataset_registry=None,
                 progress: bool = True, resample: str = DEFAULT_RESAMPLE):
        if int(pair_offset) < 1:
            raise LatentVLAError(f"pair_offset must be >= 1, got {pair_offset}")
        super().__init__(data_root_dir, data_mix, seed=seed, split=split, dataset_registry=dataset_registry,
                         progress=progress)
        self.pair_offset, self.image_size = int(pair_offset), int(image_size)
        self.resample = check_resample(resample)
        self.train, self.image_aug = bool(train), bool(image_aug)

    def __getitem__(self, i) -> dict[str, Any]:
        d, e, t = self.locate(i)
        T = int(self.indexes[d].ep_len[e])
        t2 = min(t + self.pair_offset, T - 1)
        params = None
        if self.train and self.image_aug:
            seed = derive_seed(self.seed, self._epoch_of(i), int(i)) % (2**63)
            params = sample_augment_params(np.random.default_rng(seed))
        frames = self.frames(d, e, [t, t2], [0, 0], self.image_size, params)
        actions, pad = self.action_chunk(d, e, t, self.pair_offset)
        return {"frames": frames, "actions": actions, "action_pad": pad, "instruction": self.instruction(d, e),
                **self.base_sample(d, e, t)}
