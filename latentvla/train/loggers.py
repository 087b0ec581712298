"""Metric loggers (rank 0 only): JSONL always; W&B, SwanLab, TensorBoard on request.

- `metrics.jsonl` in the run dir: one JSON object per logged step (`{"step": N, ...}`).
  On resume, records after the resumed step are dropped first, so the file reads like one
  uninterrupted run.
- W&B with `--use_wandb True` (project `--wandb_project`); SwanLab only when the environment
  has `ENABLE_SWANLAB=1`; TensorBoard with `--use_tensorboard True`. A requested backend that
  is not installed is a clear error naming the extra to install.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from latentvla.errors import LatentVLAError


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class JSONLLogger:
    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a", buffering=1)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        rec = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        self._f.close()


class WandbLogger:
    def __init__(self, project: str, entity: str | None, name: str, config: dict, run_dir: Path, resume: bool):
        try:
            import wandb
        except ImportError:
            raise LatentVLAError("--use_wandb True needs the wandb package: pip install 'latentvla[wandb]'") from None
        self._wandb = wandb
        self._run = wandb.init(project=project, entity=entity, name=name, id=name.replace("/", "_")[:128],
                               config=config, dir=str(run_dir), resume="allow" if resume else None)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        self._run.finish()


class SwanLabLogger:
    def __init__(self, project: str, name: str, config: dict, run_dir: Path):
        try:
            import swanlab
        except ImportError:
            raise LatentVLAError("ENABLE_SWANLAB=1 needs the swanlab package: pip install 'latentvla[swanlab]'") from None
        self._swanlab = swanlab
        self._run = swanlab.init(project=project, experiment_name=name, config=config, logdir=str(run_dir / "swanlab"))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._swanlab.log(dict(metrics), step=step)

    def close(self) -> None:
        self._swanlab.finish()


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LatentVLAError("--use_tensorboard True needs the tensorboard package: pip install 'latentvla[tensorboard]'") from None
        self._w = SummaryWriter(str(log_dir))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._w.add_scalar(k, v, step)

    def close(self) -> None:
        self._w.close()


class MultiLogger:
    """Fans one record out to several loggers."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.log(step, metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def swanlab_enabled() -> bool:
    return os.environ.get("ENABLE_SWANLAB", "").strip().lower() in ("1", "true", "yes", "on")


def build_loggers(run_dir: Path, *, resume_step: int | None, run_name: str, config: dict,
                  use_wandb: bool = False, wandb_project: str = "latentvla", wandb_entity: str | None = None,
                  use_tensorboard: bool = False) -> MultiLogger:
    loggers: list = [JSONLLogger(run_dir / "metrics.jsonl", resume_step=resume_step)]
    if use_wandb:
        loggers.append(WandbLogger(wandb_project, wandb_entity, run_name, config, run_dir, resume_step is not None))
    if swanlab_enabled():
        loggers.append(SwanLabLogger(wandb_project, run_name, config, run_dir))
    if use_tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    return MultiLogger(loggers)
