"""The action tokenizer's side of `latentvla lam action-train` (the loop is `latentvla.train.Trainer`,
wired in `latentvla/train/lam_run.py`).

Data flow: `ActionChunkDataset` (normalized action chunks of the platform's length, no image
decoding) -> `GlobalSampler` -> `collate_chunks` ([B, P, D] + dataset names) -> `TokenizerObjective`
(the tokenizer's loss, reconstruction metrics normalized and in robot units). `evaluate` gives the
final report's deterministic metrics over fixed-seed batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from latentvla.errors import LatentVLAError
from latentvla.lam.action_tokenizer import ActionTokenizerModel, code_usage_stats
from latentvla.lam.configuration_action_tokenizer import ActionTrainConfig
from latentvla.robots import Platform, unnormalize

_LATENT_BUFFER = 4096  # recent encoder outputs kept to restart dead codes from


# ----------------------------------------------------------------------------- data

def open_action_data(cfg: ActionTrainConfig):
    from latentvla.data.dataset import ActionChunkDataset

    ds = ActionChunkDataset(cfg.data_root_dir, cfg.data_mix, seed=cfg.seed, split=cfg.split,
                            dataset_registry=cfg.dataset_registry)
    if len(ds) == 0:
        raise LatentVLAError(f"--data_mix {cfg.data_mix}: the dataset has no transitions in split {cfg.split!r}")
    return ds


def collate_chunks(samples: Sequence[dict]) -> dict[str, Any]:
    return {"actions": torch.from_numpy(np.stack([np.asarray(s["actions"], np.float32) for s in samples])),
            "dataset_name": [s.get("dataset_name") for s in samples]}


def fixed_batches(dataset, seed: int, batch_size: int, count: int) -> list[dict]:
    """`count` batches of random transitions drawn with `seed` (codebook init, final report)."""
    rng = np.random.default_rng(seed)
    n = min(len(dataset), batch_size * count)
    idx = rng.choice(len(dataset), size=n, replace=False)
    return [collate_chunks([dataset[int(i)] for i in idx[s:s + batch_size]]) for s in range(0, n, batch_size)]


def check_batch(actions: torch.Tensor, platform: Platform, data_mix: str) -> None:
    if tuple(actions.shape[1:]) != (platform.chunk_len, platform.action_dim):
        raise LatentVLAError(f"--data_mix {data_mix}: action chunks are {tuple(actions.shape[1:])}, expected "
                             f"(chunk_len, action_dim) = ({platform.chunk_len}, {platform.action_dim}) of platform "
                             f"{platform.name!r}")
    if not torch.isfinite(actions).all():
        raise LatentVLAError(f"--data_mix {data_mix}: NaN/inf in normalized actions")


# ----------------------------------------------------------------------------- metrics

class RobotUnits:
    """Unnormalizes chunks with the statistics of the dataset each sample came from."""

    def __init__(self, statistics: dict, platform: Platform):
        self.statistics, self.platform = statistics, platform
        self.single = next(iter(statistics.values())) if len(statistics) == 1 else None

    def __call__(self, x: np.ndarray, names: Sequence[str | None]) -> np.ndarray | None:
        out = np.empty_like(x)
        for i, name in enumerate(names):
            stats = self.statistics.get(name) if name is not None else self.single
            if stats is None:
                return None
            out[i] = unnormalize(x[i], stats["action"], self.platform.action_norm_mask, self.platform.normalization)
        return out


def reconstruction_metrics(recon: torch.Tensor, actions: torch.Tensor, names, robot: RobotUnits) -> dict[str, float]:
    diff = (recon.detach().float() - actions).cpu()
    m = {"rec_mse": float(diff.pow(2).mean()), "rec_l1": float(diff.abs().mean())}
    r = robot(recon.detach().float().cpu().numpy(), names)
    a = robot(actions.cpu().numpy(), names)
    if r is not None and a is not None:
        m["rec_mse_robot"] = float(np.mean((r - a) ** 2))
        m["rec_l1_robot"] = float(np.mean(np.abs(r - a)))
    return m


@torch.no_grad()
def evaluate(model: ActionTokenizerModel, batches: list[dict], device, robot: RobotUnits) -> dict[str, float]:
    """Deterministic metrics (eval mode, quantized path only) over fixed batches: their means, and the
    code usage and perplexity of all their codes."""
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    codes = []
    for b in batches:
        x = b["actions"].to(device)
        c = model.vq.nearest(model.encoder(x))
        codes.append(c.reshape(-1).cpu())
        for k, v in reconstruction_metrics(model.decoder(model.vq.lookup(c)), x, b["dataset_name"], robot).items():
            sums[k] = sums.get(k, 0.0) + v / len(batches)
    model.train(was)
    sums["code_usage"], sums["perplexity"] = code_usage_stats(torch.cat(codes), model.config.codebook_size)
    return sums


class TokenizerObjective(nn.Module):
    """The trainer's model: batch -> {"loss", "metrics"}. Also keeps what the dead-code restarts
    and the logged code usage read: encoder outputs since the last restart, code counts since the
    last log (`training_state` carries them, and the codebook's usage window, across a resume)."""

    def __init__(self, tokenizer: ActionTokenizerModel, cfg: ActionTrainConfig, platform: Platform,
                 robot: RobotUnits, global_batch: int):
        super().__init__()
        self.tokenizer, self.cfg, self.platform, self.robot = tokenizer, cfg, platform, robot
        self.recent: deque[torch.Tensor] = deque(maxlen=max(1, _LATENT_BUFFER // (global_batch * platform.chunk_len)))
        self.counts = torch.zeros(tokenizer.config.codebook_size)  # not a buffer: DDP would overwrite it
        self.restarted = 0
        self._checked = False

    def forward(self, batch: dict) -> dict:
        x, c = batch["actions"], self.cfg
        if not self._checked:
            check_batch(x, self.platform, c.data_mix)
            self._checked = True
        out = self.tokenizer(x, mask_ratio=c.mask_ratio, commitment_weight=c.commitment_weight,
                             mask_loss_weight=c.mask_loss_weight)
        self.recent.append(out["latents"].detach().reshape(-1, self.tokenizer.config.hidden_dim))
        self.counts += torch.bincount(out["codes"].reshape(-1).cpu(), minlength=len(self.counts))
        metrics = {"mask_loss": out["mask_loss"], "commitment": out["commitment"],
                   **reconstruction_metrics(out["recon"], x, batch["dataset_name"], self.robot)}
        return {"loss": out["loss"], "metrics": metrics}

    def restart_dead_codes(self) -> None:
        self.restarted += self.tokenizer.vq.restart_dead_codes(torch.cat(list(self.recent)))
        self.recent.clear()  # the pool, like the usage window, covers the steps since the last restart

    def training_state(self) -> dict:
        return {"recent": [t.cpu() for t in self.recent], "counts": self.counts.clone(), "restarted": self.restarted,
                "usage": self.tokenizer.vq.usage.cpu()}

    def load_training_state(self, st: dict) -> None:
        dev = self.tokenizer.vq.usage.device
        self.recent.extend(t.to(dev) for t in st["recent"])
        self.counts.copy_(st["counts"])
        self.restarted = int(st["restarted"])
        self.tokenizer.vq.usage.copy_(st["usage"].to(dev))
