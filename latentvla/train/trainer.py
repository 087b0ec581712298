"""The training loop, for any `nn.Module` with `model(batch) -> {"loss": tensor, "metrics": {...}}`.

One optimizer step = `accumulation_steps` micro-batches of `per_device_batch_size` on every
rank. Each micro-batch loss is divided by the number of micro-batches exactly once, and the
gradient all-reduce runs only on the last micro-batch (DDP `no_sync`, FSDP2
`set_requires_gradient_sync`), so the step equals one step over the global batch. Clipping uses
the global gradient norm (DDP: gradients are already averaged; FSDP2: the norm of the sharded
DTensor gradients is reduced over ranks) and the logged `grad_norm` is the norm before clipping.

Checkpoints (every `save_step`, and at the end) go through a store (default `CheckpointManager`):
the trainable weights (via `save_weights`), and the training state with optimizer, scheduler,
step, data-stream position, the RNG state of every rank and `extra_state`; `resume_from` restores
all of it so the following steps are the ones an uninterrupted run would take.

Hooks for models with more than gradient steps (the latent action models): `after_step(step,
record, logged)` runs after each optimizer step, before logging and checkpointing (dead-code
restarts; adds fields to a logged record); `extra_state` (`training_state()` /
`load_training_state(d)`, per rank) rides in the training state; `checkpoints` replaces the
checkpoint store (see `CheckpointManager`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latentvla.errors import LatentVLAError
from latentvla.train import distributed as D
from latentvla.train.checkpointing import CheckpointManager
from latentvla.train.data_stream import MicroBatchStream
from latentvla.train.schedulers import build_scheduler
from latentvla.utils.weight_files import load_safetensors


@dataclass
class LoopSettings:
    per_device_batch_size: int = 8
    accumulation_steps: int = 1
    max_steps: int | None = None
    epochs: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    lr_decay_steps: list[int] = field(default_factory=list)
    lr_decay_gamma: float = 0.1
    save_step: int | None = None  # None: no checkpoints
    keep_checkpoints: int = 3
    log_step: int = 1
    num_workers: int = 0
    seed: int = 42
    strategy: str = "ddp"
    bf16: bool = False
    progress: bool = True
    val_step: int = 1000
    val_batches: int = 20
    fp16: bool = False  # float16 autocast with loss scaling (when bf16 is off)
    find_unused_parameters: bool = False  # DDP, for models whose forward skips some trainable parameters
    window_mean: bool = False  # log each value's mean over the steps since the last log (else that step's)

    @classmethod
    def from_config(cls, cfg: Any, **values: Any) -> LoopSettings:
        """The fields a config dataclass has under the same names, then `values` (the derived ones)."""
        names = {f.name for f in fields(cls)} & {f.name for f in fields(cfg)}
        return cls(**{**{n: getattr(cfg, n) for n in names}, **values})


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], torch.Tensor):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _as_float(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean()) if v.numel() else None
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return float(v)
    return None


def _add_means(sums: dict[str, float], metrics: Mapping[str, Any], n: int) -> None:
    """Add each numeric value / n to `sums` (means over n micro-batches)."""
    for k, v in metrics.items():
        if (f := _as_float(v)) is not None:
            sums[k] = sums.get(k, 0.0) + f / n


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def default_save_weights(directory: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))


def default_load_weights(directory: Path, model: nn.Module) -> None:
    path = directory / "model.safetensors"
    if not path.is_file():
        raise LatentVLAError(f"{directory}: no model.safetensors (not a checkpoint written by latentvla train)")
    state = load_safetensors(path)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise LatentVLAError(f"{path}: lacks trainable weights {missing[:5]} (a checkpoint of a different model?)")
    model.load_state_dict(state, strict=False)


class Trainer:
    """See module doc. `model` is the unwrapped module, already on `info.device`."""

    def __init__(self, model: nn.Module, dataset: Any, sampler: Any, settings: LoopSettings, *,
                 info: D.DistInfo, collate_fn: Callable | None = None, run_dir: str | Path | None = None,
                 logger: Any = None, save_weights: Callable[[Path, dict], None] = default_save_weights,
                 load_weights: Callable[[Path, nn.Module], None] = default_load_weights,
                 val_dataset: Any = None, val_sampler: Any = None,
                 callbacks: list[Callable[[int, dict], None]] | None = None, resume_from: str | Path | None = None,
                 after_step: Callable[[int, dict, bool], None] | None = None, extra_state: Any = None,
                 checkpoints: Any = None):
        self.s = settings
        self.info = info
        self.model = model
        self.logger = logger
        self.callbacks = callbacks or []
        self.after_step, self.extra_state = after_step, extra_state
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if checkpoints is None and self.run_dir is not None:
            checkpoints = CheckpointManager(self.run_dir / "checkpoints", settings.keep_checkpoints, save_weights,
                                            load_weights)
        self.ckpt = checkpoints
        self.device_type = info.device.type
        self.autocast = settings.bf16 or settings.fp16  # run.py: bf16 on by default on GPU, --precision bf16 on CPU
        self.amp_dtype = torch.bfloat16 if settings.bf16 else torch.float16
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=settings.fp16 and not settings.bf16)
        self._window: dict[str, list[float]] = {}

        # Micro-batches per epoch: the same on every rank.
        per_rank = int(D.all_reduce_min(torch.tensor(float(len(sampler)))).item())
        self.batches_per_epoch = per_rank // settings.per_device_batch_size
        if self.batches_per_epoch < 1:
            raise LatentVLAError(
                f"the training data gives {per_rank} samples per rank, fewer than --per_device_batch_size "
                f"{settings.per_device_batch_size}: use a smaller batch or more data")
        steps_per_epoch = self.batches_per_epoch // settings.accumulation_steps
        if settings.max_steps is not None:
            self.total_steps = settings.max_steps
        else:
            self.total_steps = settings.epochs * steps_per_epoch
            if self.total_steps < 1:
                raise LatentVLAError(
                    f"one epoch holds {self.batches_per_epoch} micro-batches per rank, fewer than the "
                    f"{settings.accumulation_steps} accumulation steps of one optimizer step: set --max_steps or "
                    "a smaller batch")

        if self.ckpt is not None and info.is_main:
            for line in self.ckpt.clean_stale_temps().describe():  # what killed checkpoint writers left
                print(f"[latentvla train] {line}")
        start = None
        if resume_from is not None:
            start = self.ckpt.load_training(resume_from, model)  # weights before wrapping: FSDP shards them
            if int(start.get("world_size", 1)) != info.world_size:
                raise LatentVLAError(
                    f"{resume_from} was written by {start.get('world_size')} process(es); resume it with the same "
                    f"number (now {info.world_size}) so the data stream continues exactly, or warm-start from it with "
                    "--from_pretrained True --pretrained_checkpoint DIR in a new run")
        self.wrapped = D.wrap_model(model, info, settings.strategy, mixed_bf16=settings.bf16,
                                    find_unused_parameters=settings.find_unused_parameters)
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        if not self.params:
            raise LatentVLAError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                           betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = build_scheduler(self.optimizer, settings.lr_scheduler_type, self.total_steps,
                                         settings.warmup_ratio, settings.lr_decay_steps, settings.lr_decay_gamma)
        self.step = 0
        stream_state = {"epoch": 0, "position": 0}
        if start is not None:
            self._load_training_state(start)
            stream_state = start["stream"]
        self.stream = MicroBatchStream(dataset, sampler, settings.per_device_batch_size, collate_fn,
                                       self.batches_per_epoch, settings.num_workers, settings.seed,
                                       pin_memory=self.device_type == "cuda", **stream_state)
        self.val_dataset, self.val_sampler, self.collate_fn = val_dataset, val_sampler, collate_fn

    # ------------------------------------------------------------------------- state
    def _is_fsdp(self) -> bool:
        return self.info.distributed and self.s.strategy == "fsdp"

    def _optimizer_state(self) -> dict:
        if self._is_fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.wrapped, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def _load_training_state(self, st: dict) -> None:
        if self._is_fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.wrapped, self.optimizer, optim_state_dict=st["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        if self.extra_state is not None:
            self.extra_state.load_training_state(st["extra"][self.info.rank])
        self._window = st.get("window", {})
        self.step = int(st["step"])
        _set_rng_state(st["rng"][self.info.rank])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) trainable weights on CPU; a collective under FSDP (all ranks call it)."""
        return {n: _full(p.detach()).cpu() for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> Path | None:
        if self.ckpt is None:
            return None
        weights = self.trainable_state()
        optim = self._optimizer_state()
        rngs = D.all_gather_object(_rng_state())
        extra = D.all_gather_object(self.extra_state.training_state()) if self.extra_state is not None else None
        path = None
        if self.info.is_main:
            state = {"step": self.step, "optimizer": optim, "scheduler": self.scheduler.state_dict(),
                     "stream": self.stream.state_dict(), "rng": rngs, "world_size": self.info.world_size}
            if self.scaler.is_enabled():
                state["scaler"] = self.scaler.state_dict()
            if extra is not None:
                state["extra"] = extra
            if self.s.window_mean:
                state["window"] = self._window
            path = self.ckpt.save_training(self.step, weights, state)
        D.barrier()
        return path

    # ------------------------------------------------------------------------- loop
    def _forward(self, batch: Any) -> dict:
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.autocast):
            return self.wrapped(batch)

    def _micro_step(self, batch: Any, sync: bool) -> tuple[torch.Tensor, dict]:
        with D.no_grad_sync(self.wrapped, skip=not sync):
            out = self._forward(batch)
            loss = out["loss"]
            self.scaler.scale(loss / self.s.accumulation_steps).backward()
        return loss.detach().float(), out.get("metrics", {}) or {}

    def train_step(self) -> dict:
        self.wrapped.train()
        t0 = time.perf_counter()
        wait = 0.0
        losses, metric_sums, n = [], {}, self.s.accumulation_steps
        for micro in range(n):
            tw = time.perf_counter()
            batch = _to_device(next(self.stream), self.info.device)
            wait += time.perf_counter() - tw
            loss, metrics = self._micro_step(batch, sync=micro == n - 1)
            losses.append(loss)
            _add_means(metric_sums, metrics, n)
        keys = sorted(metric_sums)
        vec = torch.tensor([float(torch.stack(losses).mean())] + [metric_sums[k] for k in keys] + [wait],
                           dtype=torch.float64)
        vec = D.all_reduce_mean(vec)  # the same values on every rank, so all ranks stop together
        max_norm = self.s.max_grad_norm if self.s.max_grad_norm > 0 else math.inf
        self.scaler.unscale_(self.optimizer)
        grad_norm = _full(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        # fp16: an overflowing gradient is expected now and then; the scaler skips that step
        if not (math.isfinite(float(vec[0])) and (math.isfinite(float(grad_norm)) or self.scaler.is_enabled())):
            raise LatentVLAError(f"step {self.step + 1}: loss {float(vec[0])}, gradient norm "
                                 f"{float(grad_norm)} (not finite); lower --learning_rate, keep --max_grad_norm > 0 or "
                                 "check the data; the weights were not updated and the last checkpoint is intact")
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        return {"loss": float(vec[0]), **{k: float(v) for k, v in zip(keys, vec[1:-1], strict=True)},
               "lr": lr, "grad_norm": float(grad_norm), "epoch": self.stream.epoch,
               "samples_per_s": self.s.per_device_batch_size * n * self.info.world_size / max(dt, 1e-9),
               "data_wait_fraction": float(vec[-1]) / max(dt, 1e-9)}

    @torch.no_grad()
    def validate(self) -> dict:
        if self.val_dataset is None:
            return {}
        self.wrapped.eval()
        n_local = len(self.val_sampler) // self.s.per_device_batch_size
        n = int(D.all_reduce_min(torch.tensor(float(min(n_local, self.s.val_batches)))).item())
        if n < 1:
            return {}
        stream = MicroBatchStream(self.val_dataset, self.val_sampler, self.s.per_device_batch_size, self.collate_fn,
                                  n, 0, self.s.seed)
        sums: dict[str, float] = {}
        for _ in range(n):
            out = self._forward(_to_device(next(stream), self.info.device))
            _add_means(sums, {"loss": out["loss"], **(out.get("metrics") or {})}, n)
        keys = sorted(sums)
        vec = D.all_reduce_mean(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
        self.wrapped.train()
        return {f"val/{k}": float(v) for k, v in zip(keys, vec, strict=True)}

    def _logs(self, step: int) -> bool:
        return step % self.s.log_step == 0 or step == self.total_steps

    def _window_mean(self, rec: dict, logged: bool) -> None:
        for k, v in rec.items():
            self._window.setdefault(k, []).append(v)
        if logged:
            rec.update({k: float(np.mean(v)) for k, v in self._window.items() if k not in ("lr", "epoch")})
            self._window = {}

    def fit(self) -> dict:
        """Train to `total_steps`; returns the last logged record."""
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.info.is_main and self.s.progress))
        last: dict = {}
        try:
            while self.step < self.total_steps:
                rec = self.train_step()
                if self.s.window_mean:
                    self._window_mean(rec, self._logs(self.step))
                if self.after_step is not None:
                    self.after_step(self.step, rec, self._logs(self.step))
                if self.val_dataset is not None and (self.step % self.s.val_step == 0 or self.step == self.total_steps):
                    rec.update(self.validate())
                last = rec
                if self.logger is not None and self.info.is_main and self._logs(self.step):
                    self.logger.log(self.step, rec)
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                if self.s.save_step and (self.step % self.s.save_step == 0 or self.step == self.total_steps):
                    self.save_checkpoint()
                for cb in self.callbacks:
                    cb(self.step, rec)
        finally:
            bar.close()
            self.stream.close()
        return last
