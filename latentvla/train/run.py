"""`latentvla train`: wire the VLA model and the data into the generic `Trainer`.

    latentvla train --vla_id la_align --vlm_path QWEN3VL_DIR --data_root_dir DATA --data_mix '["libero_goal"]' ...
    torchrun --nproc_per_node N exp/train_vla.py <same flags>      # DDP (default) or --strategy fsdp

Order: option checks and file checks (`preflight`) first — every bad input fails in seconds —
then the process group, the model (backbone + LoRA + head), the datasets and the loop.

Run directory `<run_root_dir>/<run_id>/`: `config.yaml` (resolved options + derived values),
`dataset_statistics.json`, `metrics.jsonl`, `checkpoints/step_<N>/` (a policy checkpoint that
`VLAPolicy.from_pretrained` loads, plus `training_state.pt`), `checkpoints/latest`, and with
`--merge_lora True` `merged/` (full backbone weights with LoRA folded in, plus head/strategy).
"""

from __future__ import annotations

from pathlib import Path

from latentvla.config import config_to_dict
from latentvla.errors import LatentVLAError
from latentvla.train.configuration_train import TrainConfig
from latentvla.train.preflight import PreflightResult, preflight


class _WeightsView:
    """What `save_policy_checkpoint` reads from a model, with weights gathered by the trainer
    (full tensors even when the live model is sharded by FSDP)."""

    def __init__(self, model, state: dict):
        self.cfg, self.platform, self._state = model.cfg, model.platform, state

    def trainable_state_dict(self) -> dict:
        return self._state


def build_vla_config(cfg: TrainConfig, pre: PreflightResult):
    import dataclasses

    from latentvla.vla.configuration_vla import VLAConfig, VLAOptions

    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(VLAOptions) if getattr(cfg, f.name) is not None}
    vcfg = VLAConfig(**{**values, **pre.vla_values})  # what the data and the strategy's helper decide wins
    vcfg.validate()
    return vcfg


def _datasets(cfg: TrainConfig, extra_keys: tuple[str, ...], is_main: bool):
    from latentvla.data.dataset import VLADataset
    from latentvla.train.holdout import EpisodeSubset, has_val_split, split_episodes

    common = dict(image_size=cfg.default_image_size, use_wrist_image=cfg.use_wrist_image, use_proprio=cfg.use_proprio,
                  window_size=cfg.window_size, extra_keys=extra_keys, seed=cfg.seed,
                  dataset_registry=cfg.dataset_registry, progress=is_main, resample=cfg.image_resample)
    train = VLADataset(cfg.data_root_dir, cfg.data_mix, train=True, image_aug=cfg.image_aug, split="train", **common)
    if not cfg.use_val:
        return train, train, None
    if has_val_split(train):
        val = VLADataset(cfg.data_root_dir, cfg.data_mix, train=False, image_aug=False, split="val", **common)
        return train, train, val
    train_eps, val_eps = split_episodes(train, cfg.val_fraction, cfg.seed)
    plain = VLADataset(cfg.data_root_dir, cfg.data_mix, train=False, image_aug=False, split="train", **common)
    return train, EpisodeSubset(train, train_eps), EpisodeSubset(plain, val_eps)


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.run_root_dir) / (cfg.run_id or cfg.default_run_id())


def _runs_with_checkpoints(root: Path) -> list[str]:
    try:
        return sorted(d.name for d in root.iterdir() if (d / "checkpoints").is_dir())
    except OSError:
        return []


def _no_run_message(run_dir: Path) -> str:
    import difflib

    runs = _runs_with_checkpoints(run_dir.parent)
    close = difflib.get_close_matches(run_dir.name, runs, n=1)
    listed = ", ".join(runs[:10]) + (f" (+{len(runs) - 10} more)" if len(runs) > 10 else "")
    return (f"--resume True: there is no run directory {run_dir}, so nothing to resume"
            + (f"; did you mean --run_id {close[0]}?" if close else "")
            + (f" Runs with checkpoints under {run_dir.parent}: {listed}." if runs
               else f" ({run_dir.parent} holds no runs.)")
            + " Check --run_id / --run_root_dir, or pass --resume_or_start True to start the run when it does "
              "not exist yet")


def _no_resume_point_message(run_dir: Path, point, n_complete: int, flag: str) -> str:
    from latentvla.train.checkpointing import TRAINING_STATE

    newest, problem = point.newer[0]
    what = (f"the newest checkpoint {newest} is damaged ({problem[0]}: {problem[1]})" if problem is not None
            else f"the newest checkpoint {newest} has no {TRAINING_STATE}")
    older = (f"none of the {n_complete - 1} older checkpoint(s) is intact with its {TRAINING_STATE} (only the newest "
             "checkpoint keeps the optimizer state)" if n_complete > 1 else "there is no older checkpoint")
    if point.warm_start is not None:
        fix = (f"to continue from the weights of {point.warm_start} (optimizer state and data order start afresh), "
               f"start a new run with --from_pretrained True --pretrained_checkpoint {point.warm_start} and "
               "another --run_id")
    else:
        fix = "no checkpoint has intact weights; start over with another --run_id"
    return f"{flag}: cannot resume {run_dir}: {what}, and {older}; {fix} (no checkpoint was deleted or changed)"


def _clean_stale_temps(run_dir: Path, manager) -> None:
    """Remove what killed writers of this run left (rank 0, before anything reads the checkpoints)."""
    from latentvla.utils.atomic import remove_stale_temps

    for found in (remove_stale_temps(run_dir), manager.clean_stale_temps()):
        for line in found.describe():
            print(f"[latentvla train] {line}")


def _prepare_run_dir(cfg: TrainConfig, is_main: bool = True, barrier=lambda: None,
                     run_dir: Path | None = None) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (None: a new run).

    Every rank calls it; rank 0 alone changes files (stale temporaries, damaged checkpoints set
    aside), between barriers, so all ranks decide on the same files.
    """
    from latentvla.train.checkpointing import CheckpointManager

    run_dir = run_dir or run_dir_of(cfg)  # given: `lam image-train`'s run
    manager = CheckpointManager(run_dir / "checkpoints", cfg.keep_checkpoints)
    if is_main:
        _clean_stale_temps(run_dir, manager)
    barrier()
    done = manager.complete()
    if not (cfg.resume or cfg.resume_or_start):
        if done:
            raise LatentVLAError(f"run directory {run_dir} already holds checkpoints (newest {done[-1][1].name}); pass "
                                 "--resume True to continue it, or choose another --run_id / --run_root_dir")
        return run_dir, None
    if not done:
        if not run_dir.exists() and not cfg.resume_or_start:
            raise LatentVLAError(_no_run_message(run_dir))  # a mistyped --run_id must not start over
        if is_main and not run_dir.exists():
            print(f"[latentvla train] note: --resume_or_start: {run_dir} does not exist yet; starting the run")
        elif is_main:
            print(f"[latentvla train] warning: --resume: {run_dir} holds no complete checkpoint (the run stopped "
                  "before its first one); starting the run over from step 0")
        return run_dir, None
    point = manager.resume_point()
    if point.path is None:
        flag = "--resume True" if cfg.resume else "--resume_or_start True"
        raise LatentVLAError(_no_resume_point_message(run_dir, point, len(done), flag))
    if point.newer:
        barrier()  # every rank has read the checkpoints before rank 0 renames any
        if is_main:
            for (d, problem), (_, moved) in zip(point.newer, manager.set_aside(point), strict=True):
                why = (f"damaged ({problem[0].name}: {problem[1]})" if problem is not None
                       else "newer than the resume point")
                print(f"[latentvla train] warning: checkpoint {d.name} is {why}; kept as {moved}")
            print(f"[latentvla train] warning: resuming from {point.path.name}, the newest intact checkpoint "
                  "with training state")
        barrier()
    return run_dir, point.path


def train(cfg: TrainConfig, callbacks: list | None = None) -> int:
    """Run training; `callbacks(step, record)` run after every step (tests use them)."""
    pre = preflight(cfg)  # cheap; before any process group, backbone or image

    from latentvla.train import distributed as D

    info = D.setup_distributed(cfg.device)
    try:
        if info.is_main:
            for note in pre.notes:
                print(f"[latentvla train] note: {note}")
        code = _train(cfg, pre, info, D, callbacks or [])
        D.barrier()  # every rank done (rank 0's last checkpoint write included) before the group goes away
        return code
    finally:
        D.teardown_distributed()


def _train(cfg: TrainConfig, pre: PreflightResult, info, D, callbacks: list) -> int:
    from latentvla.data.sampler import GlobalSampler
    from latentvla.train.checkpointing import write_into
    from latentvla.train.loggers import build_loggers
    from latentvla.train.trainer import LoopSettings, Trainer
    from latentvla.utils.atomic import atomic_write_json, atomic_write_text
    from latentvla.utils.seeding import seed_everything
    from latentvla.utils.weight_files import load_safetensors
    from latentvla.vla.checkpoint import save_policy_checkpoint
    from latentvla.vla.modeling_vla import LatentVLA

    run_dir, resume_from = _prepare_run_dir(cfg, info.is_main, D.barrier)
    accumulation = cfg.accumulation_steps(info.world_size)
    vcfg = build_vla_config(cfg, pre)
    seed_everything(cfg.seed)
    helper = pre.helper.to(info.device) if pre.helper is not None else None
    model = LatentVLA.from_config(vcfg, pre.platform, action_tokenizer=helper, device=info.device)
    if info.is_main:
        from latentvla.vla.parameters import format_parameter_report

        print("[latentvla train] parameters\n" + format_parameter_report(model, cfg.keep_checkpoints))
    if pre.pretrained_dir is not None and resume_from is None:
        path = pre.pretrained_dir / "model.safetensors"
        model.load_trainable_state_dict(load_safetensors(path, "--pretrained_checkpoint"),
                                        source=f"--pretrained_checkpoint {path}")
    base_ds, train_ds, val_ds = _datasets(cfg, tuple(model.required_sample_keys()), info.is_main)
    statistics = base_ds.statistics
    resolved = {
        **config_to_dict(cfg),
        "derived": {"run_dir": str(run_dir), "world_size": info.world_size, "accumulation_steps": accumulation,
                    "global_batch_size": cfg.per_device_batch_size * info.world_size * accumulation,
                    "platform": pre.platform.to_dict(), "vla": config_to_dict(vcfg), "datasets": pre.dataset_names,
                    "dataset_dirs": [str(d) for d in pre.dataset_dirs],
                    # flags given as Hugging Face repo ids (the options above hold the local snapshot paths)
                    "hub": pre.hub,
                    "device": str(info.device), "train_transitions": len(train_ds),
                    "val_transitions": len(val_ds) if val_ds is not None else 0},
    }
    if info.is_main and getattr(pre.helper, "statistics", None):
        from latentvla.train.preflight import tokenizer_statistics_mismatch

        differ = tokenizer_statistics_mismatch(pre.helper.statistics, statistics)
        if differ:
            print(f"[latentvla train] warning: the action statistics saved in --{model.strategy.helper_option} differ "
                  f"from the training data's for {', '.join(differ)} (was it trained on other data?)")
    train_config = config_to_dict(cfg)

    def save_weights(directory: Path, state: dict) -> None:
        write_into(directory, lambda d: save_policy_checkpoint(d, _WeightsView(model, state), train_config=train_config,
                                                               statistics=statistics))

    def load_weights(directory: Path, m) -> None:
        m.load_trainable_state_dict(load_safetensors(directory / "model.safetensors"), source=str(directory))

    on_gpu = info.device.type == "cuda"
    settings = LoopSettings.from_config(  # the options of the same names, then the derived ones
        cfg, accumulation_steps=accumulation, lr_decay_steps=list(cfg.lr_decay_steps),
        save_step=cfg.save_step if cfg.save_checkpoint else None,
        bf16=cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu))
    sampler = GlobalSampler(train_ds, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    val_sampler = (GlobalSampler(val_ds, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
                   if val_ds is not None else None)
    # A run that fails before its first step leaves no run dir behind (unless it existed already).
    created_run_dir = None  # the topmost directory this run creates
    if info.is_main and resume_from is None and not run_dir.exists():
        created_run_dir = run_dir
        while not created_run_dir.parent.exists():
            created_run_dir = created_run_dir.parent
    steps_done = [0]

    def count_step(step, record) -> None:
        steps_done[0] = step

    logger = None
    try:
        if info.is_main:
            import yaml

            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
            atomic_write_json(run_dir / "dataset_statistics.json", statistics)
            resume_step = int(resume_from.name.split("_")[-1]) if resume_from is not None else None
            logger = build_loggers(run_dir, resume_step=resume_step, run_name=run_dir.name, config=resolved,
                                   use_wandb=cfg.use_wandb, wandb_project=cfg.wandb_project,
                                   wandb_entity=cfg.wandb_entity, use_tensorboard=cfg.use_tensorboard)
            where = (f"resuming from {resume_from}" if resume_from is not None else "from scratch"
                     if pre.pretrained_dir is None else f"warm-started from {pre.pretrained_dir}")
            data = ", ".join(f"{n} ({d})" for n, d in zip(pre.dataset_names, pre.dataset_dirs, strict=False))
            print(f"[latentvla train] {cfg.vla_id} on {data}, platform {pre.platform.name}, "
                  f"{info.world_size} process(es) x {cfg.per_device_batch_size} x {accumulation} accumulation, "
                  f"{where}; run dir {run_dir}")
        trainer = Trainer(model, train_ds, sampler, settings, info=info, collate_fn=model.processor.collate,
                          run_dir=run_dir, logger=logger, save_weights=save_weights, load_weights=load_weights,
                          val_dataset=val_ds, val_sampler=val_sampler, resume_from=resume_from,
                          callbacks=[count_step, *callbacks])
        trainer.fit()
        if cfg.merge_lora and trainer.ckpt is not None:
            _export_merged(cfg, trainer, model, info, run_dir)
    except BaseException:
        if logger is not None:
            logger.close()
            logger = None
        if created_run_dir is not None and steps_done[0] == 0:
            import shutil

            shutil.rmtree(created_run_dir, ignore_errors=True)
        raise
    finally:
        if logger is not None:
            logger.close()
    return 0


def _export_merged(cfg: TrainConfig, trainer, model, info, run_dir: Path) -> None:
    """`merged/`: full weights for deployment (rank 0; a sharded model is reloaded from its checkpoint)."""
    import shutil

    from safetensors.torch import save_file

    from latentvla.train import distributed as D
    from latentvla.utils.atomic import atomic_directory
    from latentvla.vla.checkpoint import FILES, MERGED_FORMAT

    latest = trainer.ckpt.latest()
    if info.is_main and latest is not None:
        src = model
        if info.distributed and cfg.strategy == "fsdp":
            from latentvla.vla.checkpoint import load_policy_model

            src, _, _ = load_policy_model(latest, device="cpu")
        merged = {k: v.detach().cpu().contiguous() for k, v in src.merged_state_dict().items()}
        with atomic_directory(run_dir / "merged", overwrite=True) as tmp:
            save_file(merged, str(tmp / "model.safetensors"), metadata={"format": MERGED_FORMAT})
            for name in FILES[1:]:  # all but the weights
                if (latest / name).is_file():
                    shutil.copy2(latest / name, tmp / name)
        print(f"[latentvla train] merged weights written to {run_dir / 'merged'}")
    D.barrier()
