"""`latentvla lam image-train`: train the image latent action model.

Data: frame pairs (primary camera at t and min(t+k, T−1)) with the normalized action chunk of the
pair, from `latentvla.data.dataset.FramePairDataset`, drawn in a seeded permutation per epoch
(`GlobalSampler`) whose position is checkpointed, so resume continues the stream.

Model: built from the size flags; `--lam_path` (UniVLA stage-2 `.ckpt` or one of ours) or
`--stage_one_ckpt` (only keys containing `vq` / `action_latent` carry over) initialise it; a
checkpoint of another size is a clear error. The frozen DINO comes from `--dino_path` or from the
`--lam_path` checkpoint.

Loss (per step): MSE(predicted, true frame-t+k DINO features) + codebook MSE + 0.25·commitment
(both branches) + 0.5·action MSE on a random `--action_loss_fraction` of the batch (stage 2). Dead
codes of the trainable codebook (unused since the last restart, usage summed over ranks) are
re-seeded from current encoder outputs every `--code_restart_every` steps. Logged: losses, code
usage (distinct codes in the window), perplexity. Checkpoints: `<run>/checkpoints/step_N/`
(see `image_lam_checkpoint`), written atomically, `latest` pointer, oldest pruned.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentvla.config import config_to_dict
from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_image_lam import ImageLAMTrainConfig
from latentvla.lam.image_lam import ImageLatentActionModel
from latentvla.lam.image_lam_data import FramePairStream, open_frame_pairs
from latentvla.lam.latent_labeler import pick_device
from latentvla.utils.atomic import atomic_write_text, remove_stale_temps
from latentvla.utils.paths import check_writable_dir
from latentvla.utils.seeding import seed_everything
from latentvla.utils.weight_files import load_safetensors, load_torch_file

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
    metrics["loss"] = total.detach()
    return total, metrics


def perplexity(indices: torch.Tensor, num_codes: int) -> float:
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes).float()
    p = counts / counts.sum().clamp_min(1)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()))


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


# ----------------------------------------------------------------------------- checkpoints

def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step_") and d.name[5:].isdigit() and (d / "config.json").is_file():
            out.append((int(d.name[5:]), d))
    return sorted(out)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_same_architecture(saved: dict, model: ImageLatentActionModel, where: Path) -> None:
    want = model.config.to_dict()
    diff = [f"{k} {saved.get(k)} (checkpoint) vs {want[k]} (now)" for k in want if saved.get(k) != want[k]]
    if diff:
        raise LatentVLAError(f"{where}: checkpoint of a different size/architecture: {'; '.join(diff)}; "
                             "use another --run_id or the same flags")


# ----------------------------------------------------------------------------- training

def _init_distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def run_image_train(cfg: ImageLAMTrainConfig) -> Path:
    """Train; returns the run directory."""
    from tqdm import tqdm

    from latentvla.utils.hub import resolve_model_flags

    cfg.validate()
    # Hub repo ids -> local snapshots before anything else reads the paths (a UniVLA repo: its one .ckpt).
    hub = resolve_model_flags(cfg, {"dino_path": (".pth", ".pt"), "lam_path": (".ckpt",)})
    rank, world, local_rank = _init_distributed()
    if rank == 0:
        for name, h in hub.items():
            print(f"--{name} {h['repo_id']}: Hugging Face snapshot {h['local_path']}")
    default = f"cuda:{local_rank}" if world > 1 and torch.cuda.is_available() else None
    device = pick_device(cfg.device or default)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(cfg.seed + rank)
    run_dir = Path(cfg.results_dir) / (cfg.run_id or f"lam-stage{cfg.stage}-{_slug(cfg.data_mix)}")
    for d in (run_dir, run_dir / "checkpoints"):  # before the data is indexed and DINO loaded
        check_writable_dir(d, f"--results_dir {cfg.results_dir}: run directory")
    if rank == 0:
        for d in (run_dir, run_dir / "checkpoints"):  # what a killed run's writers left
            for line in remove_stale_temps(d).describe():
                print(line)
    if world > 1:
        torch.distributed.barrier()  # no rank lists checkpoints while rank 0 cleans
    dataset = open_frame_pairs(cfg)
    model = build_model(cfg, action_dim=dataset.action_dim).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    amp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if device.type == "cuda" else "no")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    step, consumed, start_state = 0, 0, None
    done = _checkpoints(run_dir)
    if done and cfg.resume:
        from latentvla.lam.image_lam_checkpoint import read_checkpoint_config
        from latentvla.lam.univla_checkpoint import load_lam_weights

        step, ckpt = done[-1]
        _check_same_architecture(read_checkpoint_config(ckpt)["lam"], model, ckpt)
        load_lam_weights(model, load_safetensors(ckpt / "model.safetensors"), strict=True, source=str(ckpt))
        start_state = load_torch_file(ckpt / "training_state.pt")
        opt.load_state_dict(start_state["optimizer"])
        scaler.load_state_dict(start_state["scaler"])
        consumed = int(start_state["consumed"])
        if rank == 0:
            print(f"resuming {run_dir} from {ckpt.name}")
    elif done:
        raise LatentVLAError(f"{run_dir} already holds checkpoints; pass --resume True or another --run_id")
    if step >= cfg.max_steps:
        print(f"{run_dir}: already at step {step} >= --max_steps {cfg.max_steps}")
        return run_dir

    ddp_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                            find_unused_parameters=True)
    logger = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        from latentvla.train.loggers import JSONLLogger

        logger = JSONLLogger(run_dir / "metrics.jsonl", resume_step=step if start_state else None)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # action-loss subsets, code restarts
    if start_state:
        mine = start_state["ranks"][rank]  # same world size as saved (the sampler checks it too)
        _set_rng_state(mine["rng"])
        gen.set_state(mine["generator"])
    stream = FramePairStream(dataset, seed=cfg.seed, batch_size=cfg.batch_size, rank=rank, world_size=world,
                             num_workers=cfg.num_workers, consumed=consumed)
    book_size = model.config.codebook_size
    usage = torch.zeros(book_size, device=device)  # code counts since the last restart
    if start_state:
        usage.copy_(start_state["usage"].to(device))
    window = {"indices": [], "metrics": [], "t0": time.time()}
    ddp_model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="lam image-train", disable=rank != 0, dynamic_ncols=True)
    for batch in stream:
        frames = batch["frames"].to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255.0)
        actions = batch["actions"].to(device, non_blocking=True)
        select = pick_action_subset(frames.shape[0], cfg, gen)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = ddp_model(frames, batch.get("instruction"), select.to(device) if select is not None else None)
            loss, metrics = compute_losses(model, out, actions, cfg)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip).detach()
        scaler.step(opt)
        scaler.update()
        step += 1
        idx = out["indices"] if model.config.stage == 2 else out["indices_uncontrol"]
        usage += torch.bincount(idx.reshape(-1), minlength=book_size).float()
        window["indices"].append(idx.detach().reshape(-1).cpu())
        window["metrics"].append({k: float(v) for k, v in metrics.items()})
        bar.update(1)
        if cfg.code_restart_every and step % cfg.code_restart_every == 0 and step < cfg.max_steps:
            z_e = out["z_e"] if model.config.stage == 2 else out["z_e_uncontrol"]
            restarted = restart_dead_codes(model, usage, z_e, gen, world)
            window["metrics"][-1]["codes_restarted"] = float(restarted)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            rec = _summarize(window, book_size, cfg.batch_size * world)
            if logger is not None:
                logger.log(step, rec)
            bar.set_postfix(recon=f"{rec['recon_loss']:.4f}", used=int(rec["codes_used"]),
                            ppl=f"{rec['perplexity']:.2f}")
            window = {"indices": [], "metrics": [], "t0": time.time()}
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            _save(run_dir, model, opt, scaler, cfg, step, stream.consumed, rank, world, gen, usage)
        if step >= cfg.max_steps:
            break
    bar.close()
    if logger is not None:
        logger.close()
    if world > 1:
        torch.distributed.barrier()
    return run_dir


def _summarize(window: dict, book_size: int, global_batch: int) -> dict:
    ms = window["metrics"]
    rec = {k: float(np.mean([m[k] for m in ms if k in m])) for k in ms[-1] if k != "codes_restarted"}
    idx = torch.cat(window["indices"]) if window["indices"] else torch.zeros(0, dtype=torch.long)
    rec["codes_used"] = int((torch.bincount(idx, minlength=book_size) > 0).sum())
    rec["perplexity"] = perplexity(idx, book_size)
    rec["codes_restarted"] = float(sum(m.get("codes_restarted", 0.0) for m in ms))
    dt = max(time.time() - window["t0"], 1e-9)
    rec["pairs_per_s"] = len(ms) * global_batch / dt
    return rec


def _save(run_dir: Path, model, opt, scaler, cfg, step: int, consumed: int, rank: int, world: int,
          gen: torch.Generator, usage: torch.Tensor) -> None:
    from latentvla.lam.image_lam_checkpoint import save_lam_checkpoint

    ranks = [{"rng": _rng_state(), "generator": gen.get_state()}]  # per-rank random state
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, ranks[0])
        ranks = gathered
    if rank != 0:
        return
    state = {"step": step, "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "consumed": consumed,
             "ranks": ranks, "usage": usage.detach().cpu()}
    t5 = str(Path(cfg.t5_path).resolve()) if cfg.t5_path else None
    save_lam_checkpoint(run_dir / "checkpoints" / f"step_{step}", model, step=step, train=config_to_dict(cfg),
                        training_state=state, t5_path=t5)
    atomic_write_text(run_dir / "checkpoints" / "latest", f"step_{step}\n")
    if cfg.keep_checkpoints > 0:
        import shutil

        for _, old in _checkpoints(run_dir)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
    return keep.strip("_")[:60] or "data"


