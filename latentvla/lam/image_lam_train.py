"""The image LAM's side of `latentvla lam image-train` (the loop is `latentvla.train.Trainer`, wired
in `latentvla/train/lam_run.py`).

Data: frame pairs (primary camera at t and min(t+k, T−1)) with the normalized action chunk of the
pair, from `latentvla.data.dataset.FramePairDataset` (`open_frame_pairs`, `collate_pairs`),
drawn in a seeded permutation per epoch (`GlobalSampler`).

Model: built from the size flags; `--lam_path` (UniVLA stage-2 `.ckpt` or one of ours) or
`--stage_one_ckpt` (only keys containing `vq` / `action_latent` carry over) initialise it; a
checkpoint of another size is a clear error. The frozen DINO comes from `--dino_path` or from the
`--lam_path` checkpoint.

Loss (per step): MSE(predicted, true frame-t+k DINO features) + codebook MSE + 0.25·commitment
(both branches) + 0.5·action MSE on a random `--action_loss_fraction` of the batch (stage 2). Dead
codes of the trainable codebook (unused since the last restart, usage summed over ranks) are
re-seeded from current encoder outputs every `--code_restart_every` steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_image_lam import ImageLAMTrainConfig
from latentvla.lam.image_lam import ImageLatentActionModel

# ----------------------------------------------------------------------------- data

def open_frame_pairs(cfg: ImageLAMTrainConfig):
    """`FramePairDataset` (samples `{"frames": uint8 [2, S, S, 3], "actions": float32 [k, D],
    "instruction": str}`) with an `action_dim` attribute."""
    from latentvla.data.dataset import FramePairDataset

    ds = FramePairDataset(cfg.data_root_dir, cfg.data_mix, image_size=cfg.image_size, train=True,
                          image_aug=cfg.image_aug, seed=cfg.seed, dataset_registry=cfg.dataset_registry,
                          pair_offset=cfg.pair_offset, resample=cfg.image_resample)
    if len(ds) == 0:
        raise LatentVLAError(f"--data_mix {cfg.data_mix}: no transitions to train on")
    if not hasattr(ds, "action_dim"):
        ds.action_dim = int(np.asarray(ds[0]["actions"]).shape[-1])
    return ds


def collate_pairs(samples: Sequence[dict]) -> dict:
    return {
        "frames": torch.from_numpy(np.stack([np.asarray(s["frames"], np.uint8) for s in samples])),
        "actions": torch.from_numpy(np.stack([np.asarray(s["actions"], np.float32) for s in samples])),
        "instruction": [str(s.get("instruction", "")) for s in samples],
    }


# ----------------------------------------------------------------------------- model set-up

def _load_dino(cfg: ImageLAMTrainConfig):
    from latentvla.lam.dino import load_dino
    from latentvla.lam.image_lam_checkpoint import checkpoint_dino

    return load_dino(cfg.dino_path) if cfg.dino_path else checkpoint_dino(cfg.lam_path)


def build_model(cfg: ImageLAMTrainConfig, action_dim: int) -> ImageLatentActionModel:
    from latentvla.lam.image_lam_checkpoint import read_lam_checkpoint, read_lam_tensors
    from latentvla.lam.univla_checkpoint import check_train_flags, load_lam_weights, stage_one_transfer

    dino = _load_dino(cfg)
    if cfg.image_size % dino.patch_size:
        raise LatentVLAError(f"--image_size {cfg.image_size} is not a multiple of the DINO patch size "
                             f"{dino.patch_size}")
    text = None
    text_dim = 768
    if cfg.stage == 1:
        from latentvla.lam.image_lam import T5TextEncoder

        text = T5TextEncoder(cfg.t5_path)
        text_dim = text.hidden_size
    mcfg = cfg.model_config(dino_dim=dino.hidden_size, num_patches=dino.num_patches(cfg.image_size),
                            action_dim=action_dim if cfg.stage == 2 and cfg.action_loss_weight > 0 else 0,
                            text_dim=text_dim)
    model = ImageLatentActionModel(mcfg, dino=dino, text_encoder=text)
    if cfg.lam_path:
        tensors, stage, stored = read_lam_checkpoint(cfg.lam_path)
        # heads are not in the weights: the checkpoint's own settings catch a silent mismatch
        check_train_flags(stored, num_heads=mcfg.num_heads, pair_offset=mcfg.pair_offset,
                          source=f"--lam_path {cfg.lam_path}")
        if stage != mcfg.stage:
            raise LatentVLAError(f"--lam_path {cfg.lam_path} is a stage-{stage} checkpoint but --stage is {mcfg.stage}"
                                 + ("; use --stage_one_ckpt to start stage 2 from it" if stage == 1 else ""))
        load_lam_weights(model, tensors, strict=not cfg.non_strict, source=f"--lam_path {cfg.lam_path}")
    elif cfg.stage_one_ckpt:
        tensors, stage = read_lam_tensors(cfg.stage_one_ckpt)
        if stage != 1:
            raise LatentVLAError(f"--stage_one_ckpt {cfg.stage_one_ckpt} is a stage-{stage} checkpoint, "
                                 "expected stage 1")
        carried = stage_one_transfer(tensors)
        load_lam_weights(model, carried, strict=False, source=f"--stage_one_ckpt {cfg.stage_one_ckpt}")
        print(f"stage 1 → 2: carried {', '.join(sorted(carried))}")
    return model


# ----------------------------------------------------------------------------- losses

def pick_action_subset(batch_size: int, cfg: ImageLAMTrainConfig, gen: torch.Generator) -> torch.Tensor | None:
    """Indices of the pairs that get the action loss this step (a random `--action_loss_fraction`)."""
    if cfg.stage != 2 or cfg.action_loss_weight <= 0 or cfg.action_loss_fraction <= 0:
        return None
    n = max(1, int(round(cfg.action_loss_fraction * batch_size)))
    return torch.randperm(batch_size, generator=gen)[:n]


def compute_losses(model: ImageLatentActionModel, out: dict, actions: torch.Tensor,
                   cfg: ImageLAMTrainConfig) -> tuple[torch.Tensor, dict]:
    recon = F.mse_loss(out["recon"].float(), out["target"].float())
    total = recon
    metrics = {"recon_loss": recon.detach()}
    branches = [("uncontrol", out["z_e_uncontrol"], out["codes_uncontrol"])]
    if model.config.stage == 2:
        branches.append(("action", out["z_e"], out["codes"]))
    for name, z_e, codes in branches:
        z_e, codes = z_e.float(), codes.float()
        cb = F.mse_loss(codes, z_e.detach())
        commit = F.mse_loss(z_e, codes.detach())
        total = total + cb + cfg.commitment_weight * commit
        metrics[f"codebook_loss_{name}"] = cb.detach()
        metrics[f"commit_loss_{name}"] = commit.detach()
    if "action_pred" in out:
        pred = out["action_pred"].float()
        target = actions[out["action_select"].to(actions.device)].reshape(pred.shape[0], -1).float()
        if pred.shape != target.shape:
            raise LatentVLAError(f"action chunk of the pair has {target.shape[1]} values, the action head predicts "
                                 f"{pred.shape[1]} (pair_offset × action_dim)")
        act = F.mse_loss(pred, target)
        total = total + cfg.action_loss_weight * act
        metrics["action_loss"] = act.detach()
    return total, metrics


@torch.no_grad()
def restart_dead_codes(model: ImageLatentActionModel, usage: torch.Tensor, z_e: torch.Tensor,
                       gen: torch.Generator, world_size: int = 1) -> int:
    """Re-seed codes unused since the last restart with random current encoder outputs."""
    if world_size > 1:
        torch.distributed.all_reduce(usage)
    dead = torch.nonzero(usage < 1).flatten()
    if len(dead):
        book = model.trainable_codebook.codebook.weight
        pool = z_e.detach().reshape(-1, z_e.shape[-1]).float()
        pick = torch.randint(0, pool.shape[0], (len(dead),), generator=gen).to(pool.device)
        book.data[dead.to(book.device)] = pool[pick].to(book.dtype)
        if world_size > 1:
            torch.distributed.broadcast(book.data, src=0)
    usage.zero_()
    return int(len(dead))


def check_same_architecture(saved: dict, model: ImageLatentActionModel, where) -> None:
    want = model.config.to_dict()
    diff = [f"{k} {saved.get(k)} (checkpoint) vs {want[k]} (now)" for k in want if saved.get(k) != want[k]]
    if diff:
        raise LatentVLAError(f"{where}: checkpoint of a different size/architecture: {'; '.join(diff)}; "
                             "use another --run_id or the same flags")


class ImageLAMObjective(nn.Module):
    """The trainer's model: batch -> {"loss", "metrics"}. Also counts the codes used since the last
    restart (`usage`) and since the last log (`counts`) and keeps the last encoder outputs (the
    restart pool); `training_state` carries them and the action-subset generator across a resume."""

    def __init__(self, lam: ImageLatentActionModel, cfg: ImageLAMTrainConfig, rank: int = 0):
        super().__init__()
        self.lam, self.cfg = lam, cfg
        book = lam.config.codebook_size
        self.usage, self.counts = torch.zeros(book), torch.zeros(book)  # not buffers: DDP would overwrite them
        self.restarted = 0
        self.last_z_e: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # action-loss subsets

    def forward(self, batch: dict) -> dict:
        frames = batch["frames"].permute(0, 1, 4, 2, 3).float().div_(255.0)
        select = pick_action_subset(frames.shape[0], self.cfg, self.generator)
        out = self.lam(frames, batch.get("instruction"), select.to(frames.device) if select is not None else None)
        loss, metrics = compute_losses(self.lam, out, batch["actions"], self.cfg)
        stage2 = self.lam.config.stage == 2
        idx = (out["indices"] if stage2 else out["indices_uncontrol"]).detach().reshape(-1)
        used = torch.bincount(idx, minlength=len(self.counts)).float()
        self.usage = self.usage.to(used.device) + used
        self.counts += used.cpu()
        self.last_z_e = (out["z_e"] if stage2 else out["z_e_uncontrol"]).detach()
        return {"loss": loss, "metrics": metrics}

    def restart_dead_codes(self, world_size: int) -> None:
        self.restarted += restart_dead_codes(self.lam, self.usage, self.last_z_e, self.generator, world_size)

    def training_state(self) -> dict:
        return {"usage": self.usage.cpu(), "counts": self.counts.clone(), "restarted": self.restarted,
                "generator": self.generator.get_state()}

    def load_training_state(self, st: dict) -> None:
        self.usage, self.counts = st["usage"].clone(), st["counts"].clone()
        self.restarted = int(st["restarted"])
        self.generator.set_state(st["generator"])
