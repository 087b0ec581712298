"""`latentvla lam action-train` and `latentvla lam image-train`: the latent action models on `Trainer`.

Both use the VLA's loop (`trainer.Trainer`): data stream, DDP under torchrun (the tokenizer's
`--batch_size` is split over the processes, the image LAM's is per process), exact resume, pruning,
loggers. Through its hooks, `after_step` restarts dead codes (every rank then holds rank 0's
codebook) and adds the log window's code statistics (over all ranks), and each objective's
`training_state` rides in the checkpoint. Logged values are means over the log window.

Outputs:
- action tokenizer, in `--results_dir`: `tokenizer_step_{N}.pt` (`lam/action_tokenizer_checkpoint.py`),
  beside the newest one `training_state_step_{N}.pt`; `config.json`, `dataset_statistics.json`,
  `metrics.jsonl` and `report.json` (final metrics over `--eval_batches` fixed-seed batches, plus
  the first and last logged records).
- image LAM, in `<results_dir>/<run_id>/`: `config.yaml`, `metrics.jsonl`, `checkpoints/step_N/`
  (`config.json` + `model.safetensors` of `lam/image_lam_checkpoint.py`, `COMPLETE`, and in the
  newest `training_state.pt`) and `checkpoints/latest`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from latentvla.config import config_to_dict
from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_action_tokenizer import ActionTrainConfig
from latentvla.lam.configuration_image_lam import ImageLAMTrainConfig
from latentvla.train import distributed as D
from latentvla.utils.atomic import atomic_path, atomic_write_json, atomic_write_text, remove_stale_temps
from latentvla.utils.paths import check_writable_dir
from latentvla.utils.seeding import seed_everything


def _code_stats(objective, device: torch.device) -> tuple[int, float, int]:
    """(distinct codes, perplexity, codes restarted) since the last log, over all ranks; starts a new window."""
    counts = D.all_reduce_sum(objective.counts.to(device)).cpu()
    p = counts / counts.sum().clamp(min=1)
    nz = p[p > 0]
    out = int((counts > 0).sum()), math.exp(float(-(nz * nz.log()).sum())), objective.restarted
    objective.counts.zero_()
    objective.restarted = 0
    return out


def _fit(cfg: Any, objective, dataset, collate_fn, info, settings, log_dir: Path, resume_from: Path | None, **kw):
    """Build the trainer (and rank 0's loggers) and train; returns (trainer, last record)."""
    from latentvla.data.sampler import GlobalSampler
    from latentvla.train.loggers import build_loggers
    from latentvla.train.trainer import Trainer

    logger = None
    if info.is_main:
        step = int(resume_from.stem.rsplit("_", 1)[-1]) if resume_from else None  # step_N, tokenizer_step_N.pt
        logger = build_loggers(log_dir, resume_step=step, run_name=getattr(cfg, "run_name", None) or log_dir.name,
                               config=config_to_dict(cfg), use_wandb=cfg.use_wandb, wandb_project=cfg.wandb_project,
                               use_tensorboard=cfg.use_tensorboard)
    try:
        sampler = GlobalSampler(dataset, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
        trainer = Trainer(objective, dataset, sampler, settings, info=info, collate_fn=collate_fn, logger=logger,
                          extra_state=objective, resume_from=resume_from, **kw)
        return trainer, trainer.fit()
    finally:
        if logger is not None:
            logger.close()


def _run(train, cfg: Any) -> Any:
    info = D.setup_distributed(cfg.device)
    try:
        out = train(cfg, info)
        D.barrier()
        return out
    finally:
        D.teardown_distributed()


# ----------------------------------------------------------------------------- action tokenizer

class TokenizerFiles:
    """The trainer's checkpoint store for the action tokenizer: `tokenizer_step_{N}.pt` in the
    results dir (written last, so its presence marks a complete checkpoint), the training state
    beside the newest one only, the newest `--keep_last` files kept."""

    def __init__(self, results: Path, keep_last: int | None, payload):
        self.results, self.keep_last, self.payload = results, keep_last, payload

    def state_file(self, step: int) -> Path:
        return self.results / f"training_state_step_{step}.pt"

    def clean_stale_temps(self):
        return remove_stale_temps(self.results)

    def latest(self) -> Path | None:
        from latentvla.lam.action_tokenizer_checkpoint import list_checkpoints

        found = list_checkpoints(self.results)
        return found[-1][1] if found else None

    def save_training(self, step: int, weights: dict, state: dict) -> Path:
        from latentvla.lam.action_tokenizer_checkpoint import checkpoint_name, list_checkpoints

        with atomic_path(self.state_file(step)) as tmp:
            torch.save(state, tmp)
        path = self.payload(self.results / checkpoint_name(step), step)
        found = list_checkpoints(self.results)
        for i, (s, p) in enumerate(found):
            if s != step:
                self.state_file(s).unlink(missing_ok=True)
            if self.keep_last is not None and i < len(found) - self.keep_last:
                p.unlink(missing_ok=True)
        return path

    def load_training(self, path: Path, model) -> dict:
        """The training state of `path` (its weights are already in the model it was built from)."""
        from latentvla.utils.weight_files import load_torch_file

        step = int(Path(path).stem.rsplit("_", 1)[-1])
        if not self.state_file(step).is_file():
            raise LatentVLAError(f"{path}: no {self.state_file(step).name} beside it (written by an earlier latentvla "
                                 f"or an older checkpoint of the run): it cannot be resumed exactly; continue from its "
                                 f"weights in a new --results_dir with --init_checkpoint {path}")
        return load_torch_file(self.state_file(step))


def _tokenizer_model(cfg: ActionTrainConfig, platform, resume_from: Path | None):
    from latentvla.lam.action_tokenizer import ActionTokenizerModel, check_platform
    from latentvla.lam.action_tokenizer_checkpoint import load_tokenizer_checkpoint
    from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig

    source = resume_from or cfg.init_checkpoint
    if source:
        loaded = load_tokenizer_checkpoint(source)
        check_platform(loaded.model.config, loaded.platform, platform, str(source), f"--data_mix {cfg.data_mix}")
        model = loaded.model
        model.config.chunk_len = platform.chunk_len
    else:
        model = ActionTokenizerModel(ActionTokenizerConfig(action_dim=platform.action_dim, chunk_len=platform.chunk_len,
                                                           hidden_dim=cfg.hidden_dim, codebook_size=cfg.codebook_size,
                                                           ema_decay=cfg.ema_decay))
    model.vq.decay = cfg.ema_decay
    return model


def _train_tokenizer(cfg: ActionTrainConfig, info) -> dict[str, Any]:
    from latentvla.lam.action_tokenizer_checkpoint import list_checkpoints, save_tokenizer_checkpoint
    from latentvla.lam.action_tokenizer_train import (
        RobotUnits,
        TokenizerObjective,
        collate_chunks,
        evaluate,
        fixed_batches,
        open_action_data,
    )
    from latentvla.train.trainer import LoopSettings

    if cfg.batch_size % info.world_size:
        raise LatentVLAError(f"--batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    seed_everything(cfg.seed)
    results = Path(cfg.results_dir)
    check_writable_dir(results, "--results_dir")  # before the data is read
    existing = list_checkpoints(results)
    if existing and not cfg.resume:
        raise LatentVLAError(f"--results_dir {results} already holds {existing[-1][1].name}; pass --resume to continue "
                             f"or choose another directory")
    if cfg.resume and not existing and info.is_main:
        print(f"--resume: no checkpoint in {results}; starting from scratch")
    resume_from = existing[-1][1] if cfg.resume and existing else None
    dataset = open_action_data(cfg)
    platform, statistics = dataset.platform, dataset.statistics
    robot = RobotUnits(statistics, platform)
    model = _tokenizer_model(cfg, platform, resume_from).to(info.device).train()
    if resume_from is not None and info.is_main:
        print(f"resuming from {resume_from}")
    if resume_from is None and not cfg.init_checkpoint and cfg.init_batches > 0:
        init = fixed_batches(dataset, cfg.seed + 1, cfg.batch_size, cfg.init_batches)
        with torch.no_grad():
            model.vq.init_from_data(torch.cat([model.encoder(b["actions"].to(info.device)) for b in init]))
    if info.rank:
        seed_everything(cfg.seed + info.rank)  # each rank draws its own masks
    objective = TokenizerObjective(model, cfg, platform, robot, cfg.batch_size)
    if info.is_main:
        atomic_write_json(results / "config.json", {**config_to_dict(cfg), "platform": platform.to_dict()})
        atomic_write_json(results / "dataset_statistics.json", statistics)
    train_config = config_to_dict(cfg)

    def payload(path: Path, step: int) -> Path:
        return save_tokenizer_checkpoint(path, model, step=step, statistics=statistics, platform=platform.to_dict(),
                                         extra={"train_config": train_config})

    def after_step(step: int, rec: dict, logged: bool) -> None:
        if cfg.restart_every and step % cfg.restart_every == 0:
            objective.restart_dead_codes()
            D.broadcast_(model.vq.embedding.data, model.vq.ema_w, model.vq.cluster_size)
        if logged:
            used, rec["perplexity"], rec["restarted_codes"] = _code_stats(objective, info.device)
            rec["code_usage"] = used / model.config.codebook_size

    settings = LoopSettings.from_config(
        cfg, per_device_batch_size=cfg.batch_size // info.world_size, max_steps=cfg.num_steps,
        max_grad_norm=cfg.grad_clip or 0.0, save_step=cfg.save_every, log_step=cfg.log_every, window_mean=True,
        progress=True)
    t0 = time.perf_counter()
    trainer, last = _fit(cfg, objective, dataset, collate_chunks, info, settings, results, resume_from,
                         after_step=after_step, checkpoints=TokenizerFiles(results, cfg.keep_last, payload))
    if not info.is_main:
        return {}
    final = evaluate(model, fixed_batches(dataset, cfg.seed + 2, cfg.batch_size, max(cfg.eval_batches, 1)),
                     info.device, robot)
    lines = (results / "metrics.jsonl").read_text().splitlines() if (results / "metrics.jsonl").is_file() else []
    report = {
        "checkpoint": str(trainer.ckpt.latest()), "step": trainer.step, "platform": platform.name,
        "data_mix": cfg.data_mix, "datasets": sorted(statistics), "codebook_size": model.config.codebook_size,
        "chunk_len": platform.chunk_len, "action_dim": platform.action_dim, "final": final,
        "first_logged": json.loads(lines[0]) if lines else None,
        "last_logged": {"step": trainer.step, **last} if last else None, "train_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(results / "report.json", report)
    print(json.dumps({"checkpoint": report["checkpoint"], **{k: round(v, 6) for k, v in final.items()}}))
    return report


def train_action_tokenizer(cfg: ActionTrainConfig) -> dict[str, Any]:
    """Run `latentvla lam action-train`; returns the final report (also written to report.json; {} off rank 0)."""
    return _run(_train_tokenizer, cfg)


def run_action_train(cfg: ActionTrainConfig) -> int:
    train_action_tokenizer(cfg)
    return 0


# ----------------------------------------------------------------------------- image LAM

def _image_run_dir(cfg: ImageLAMTrainConfig, info) -> tuple[Path, Path | None]:
    from latentvla.train.checkpointing import COMPLETE_MARKER, CheckpointManager
    from latentvla.train.run import _prepare_run_dir

    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in cfg.data_mix).strip("_")[:60] or "data"
    run_dir = Path(cfg.results_dir) / (cfg.run_id or f"lam-stage{cfg.stage}-{slug}")
    for d in (run_dir, run_dir / "checkpoints"):  # before the data is indexed and DINO loaded
        check_writable_dir(d, f"--results_dir {cfg.results_dir}: run directory")
    manager = CheckpointManager(run_dir / "checkpoints")
    old = [d for d in (manager.root.glob("step_*") if manager.root.is_dir() else [])
           if (d / "config.json").is_file() and not (d / COMPLETE_MARKER).is_file()]
    if old and not manager.complete() and cfg.resume:
        names = ", ".join(sorted(d.name for d in old))
        raise LatentVLAError(f"{run_dir}: its checkpoints ({names}) were written by an earlier latentvla and cannot be "
                             f"resumed exactly; start a new --run_id from their weights with --lam_path {run_dir}")
    # --resume True (the default) continues a run that has checkpoints and starts one that has none
    flags = SimpleNamespace(resume=cfg.resume and bool(manager.complete()), resume_or_start=False,
                            keep_checkpoints=cfg.keep_checkpoints)
    return _prepare_run_dir(flags, info.is_main, D.barrier, run_dir=run_dir)


def _train_image_lam(cfg: ImageLAMTrainConfig, info) -> Path:
    from latentvla.lam.image_lam_checkpoint import read_checkpoint_config, save_lam_checkpoint
    from latentvla.lam.image_lam_train import (
        ImageLAMObjective,
        build_model,
        check_same_architecture,
        collate_pairs,
        open_frame_pairs,
    )
    from latentvla.lam.univla_checkpoint import load_lam_weights
    from latentvla.train.checkpointing import write_into
    from latentvla.train.trainer import LoopSettings
    from latentvla.utils.weight_files import load_safetensors

    seed_everything(cfg.seed)
    run_dir, resume_from = _image_run_dir(cfg, info)
    dataset = open_frame_pairs(cfg)
    lam = build_model(cfg, action_dim=dataset.action_dim).to(info.device)
    objective = ImageLAMObjective(lam, cfg, info.rank)
    t5 = str(Path(cfg.t5_path).resolve()) if cfg.t5_path else None
    done = [0]  # steps taken (the checkpoint's step)

    def save_weights(directory: Path, _trainable: dict) -> None:
        write_into(directory, lambda d: save_lam_checkpoint(d, lam, step=done[0], train=config_to_dict(cfg),
                                                             t5_path=t5))

    def load_weights(directory: Path, _objective) -> None:
        check_same_architecture(read_checkpoint_config(directory)["lam"], lam, directory)
        load_lam_weights(lam, load_safetensors(directory / "model.safetensors"), strict=True, source=str(directory))

    def after_step(step: int, rec: dict, logged: bool) -> None:
        done[0] = step
        if cfg.code_restart_every and step % cfg.code_restart_every == 0 and step < cfg.max_steps:
            objective.restart_dead_codes(info.world_size)
        if logged:
            rec["codes_used"], rec["perplexity"], rec["codes_restarted"] = _code_stats(objective, info.device)

    amp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if info.device.type == "cuda" else "no")
    settings = LoopSettings.from_config(
        cfg, per_device_batch_size=cfg.batch_size, max_grad_norm=cfg.grad_clip, save_step=cfg.save_every,
        log_step=cfg.log_every, bf16=amp == "bf16", fp16=amp == "fp16", find_unused_parameters=True,
        window_mean=True)
    if info.is_main:
        import yaml

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if resume_from is not None:
            print(f"resuming {run_dir} from {resume_from.name}")
    _fit(cfg, objective, dataset, collate_pairs, info, settings, run_dir, resume_from, after_step=after_step,
         run_dir=run_dir, save_weights=save_weights, load_weights=load_weights)
    return run_dir


def run_image_train(cfg: ImageLAMTrainConfig) -> Path:
    """Train; returns the run directory."""
    from latentvla.utils.hub import resolve_model_flags

    cfg.validate()
    # Hub repo ids -> local snapshots before anything else reads the paths (a UniVLA repo: its one .ckpt).
    for name, h in resolve_model_flags(cfg, {"dino_path": (".pth", ".pt"), "lam_path": (".ckpt",)}).items():
        print(f"--{name} {h['repo_id']}: Hugging Face snapshot {h['local_path']}")
    return _run(_train_image_lam, cfg)
