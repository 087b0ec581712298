"""Batched image-LAM inference over episodes: frames → (latent_idx [T, C], latent_z [T, C, E]).

Step t of an episode pairs frame t with frame min(t + k, T − 1). Each frame goes through DINO
once (pairs share frames), then the LAM encoder runs over the pairs; both in batches that span
episodes. On GPU the encoder runs under bf16 autocast (DINO stays fp32); code vectors are read
from the codebook in fp32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from latentvla.data.transforms import DEFAULT_RESAMPLE
from latentvla.errors import LatentVLAError
from latentvla.lam.image_lam import ImageLatentActionModel
from latentvla.utils.device import resolve_device


def decode_frame(data: bytes, size: int, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Encoded image → uint8 [size, size, 3], exactly as the training samples (`process_image`, no augmentation)."""
    from latentvla.data.transforms import process_image

    return process_image(data, size, None, resample)


def pair_targets(num_steps: int, offset: int) -> np.ndarray:
    """Index of the second frame of each step's pair: min(t + k, T − 1)."""
    return np.minimum(np.arange(num_steps) + offset, num_steps - 1)


class LatentLabeler:
    """Turns lists of encoded episode frames into latent-action labels with a stage-2 LAM."""

    def __init__(self, model: ImageLatentActionModel, *, pair_offset: int, batch_size: int = 64,
                 device: str | None = None, mixed_precision: str = "auto", decode_threads: int | None = None):
        if model.config.stage != 2:
            raise LatentVLAError("annotation needs a stage-2 LAM (task-centric codes); this checkpoint is stage 1")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.pair_offset = int(pair_offset)
        self.batch_size = int(batch_size)
        self.image_size = int(model.config.image_size)
        self.image_resample = model.config.image_resample  # as the LAM's training frames were made
        use_bf16 = mixed_precision == "bf16" or (mixed_precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        threads = decode_threads if decode_threads is not None else min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self.num_codes = model.config.num_codes
        self.latent_dim = model.config.latent_dim

    def _decode(self, images: Sequence[bytes]) -> np.ndarray:
        fn = lambda b: decode_frame(b, self.image_size, self.image_resample)  # noqa: E731
        frames = list(self._pool.map(fn, images)) if self._pool else [fn(b) for b in images]
        return np.stack(frames) if frames else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    @torch.no_grad()
    def _features(self, frames: np.ndarray) -> torch.Tensor:
        out = []
        for i in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(frames[i:i + self.batch_size]).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            out.append(self.model.dino_features(x))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.num_patches, self.model.config.dino_dim)

    @torch.no_grad()
    def _encode_pairs(self, feats: torch.Tensor, first: np.ndarray, second: np.ndarray):
        idx_out, z_out = [], []
        for i in range(0, len(first), self.batch_size):
            a = torch.from_numpy(first[i:i + self.batch_size]).to(self.device)
            b = torch.from_numpy(second[i:i + self.batch_size]).to(self.device)
            pair = torch.stack([feats[a], feats[b]], dim=1)
            with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                idx, z = self.model.encode_latent_actions(pair)
            idx_out.append(idx.cpu())
            z_out.append(z.float().cpu())
        return torch.cat(idx_out).numpy().astype(np.int64), torch.cat(z_out).numpy().astype(np.float32)

    def label_episodes(self, episodes: Sequence[Sequence[bytes]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each episode (list of T encoded frames): (latent_idx int64 [T, C], latent_z float32 [T, C, E])."""
        lengths = [len(ep) for ep in episodes]
        frames = self._decode([img for ep in episodes for img in ep])
        feats = self._features(frames)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths else np.zeros(0, np.int64)
        first = np.concatenate([s + np.arange(n) for s, n in zip(starts, lengths, strict=True)]
                               or [np.zeros(0, np.int64)])
        second = np.concatenate([s + pair_targets(n, self.pair_offset) for s, n in zip(starts, lengths, strict=True)]
                                or [np.zeros(0, np.int64)])
        if len(first):
            idx, z = self._encode_pairs(feats, first.astype(np.int64), second.astype(np.int64))
        else:
            idx = np.zeros((0, self.num_codes), np.int64)
            z = np.zeros((0, self.num_codes, self.latent_dim), np.float32)
        out, pos = [], 0
        for n in lengths:
            out.append((idx[pos:pos + n], z[pos:pos + n]))
            pos += n
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
