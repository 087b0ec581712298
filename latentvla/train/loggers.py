"""Metric loggers (rank 0 only): JSONL always; W&B, SwanLab, TensorBoard on request.

- `metrics.jsonl` in the run dir: one JSON object per logged step (`{"step": N, ...}`).
  On resume, records after the resumed step are dropped first, so the file reads like one
  uninterrupted run; a torn last line (killed mid-write, full disk) is dropped with a notice.
- W&B with `--use_wandb True` (project `--wandb_project`); SwanLab only when the environment
  has `ENABLE_SWANLAB=1`; TensorBoard with `--use_tensorboard True`. A requested backend that
  is not installed, or that cannot start (e.g. not logged in), is a clear error naming the fix.
  Offline use: `WANDB_MODE=offline`, `SWANLAB_MODE=offline` (or `local`).
- A run that ends with an exception is reported to W&B / SwanLab as failed / crashed.
- On resume, TensorBoard drops the events after the resumed step (`purge_step`); W&B and SwanLab
  in offline mode start a new local run that continues at the resumed step.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _failure() -> BaseException | None:
    """The exception being handled while a logger is closed (run.py closes them in its `except`)."""
    return sys.exc_info()[1]


def _wandb_run_id(name: str) -> str:
    # W&B refuses ids with any of :;,#?/' (UsageError); keep the id readable and at most 128 chars.
    return "".join(c if c.isalnum() or c in "+-_.=" else "_" for c in name)[:128]


def _record_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None when the line is not a whole record."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("step", 0), int):
        return None
    return int(rec.get("step", 0))


def _records_up_to(path: Path, resume_step: int) -> list[str]:
    """The lines of `path` with step <= resume_step. A torn last line (a kill or a full disk during a
    write) is dropped with a notice: it is always a step after the last checkpoint, so nothing that
    the resumed run keeps is lost. A damaged line elsewhere is dropped too, and reported."""
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    keep, bad = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        step = _record_step(line)
        if step is None:
            bad.append(i)
        elif step <= resume_step:
            keep.append(line)
    if bad:
        last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
        what = ("its last line is cut off (the run was killed while writing it)" if bad == [last] else
                f"line(s) {', '.join(str(i + 1) for i in bad[:10])} are not JSON records")
        print(f"[latentvla] note: {path}: {what}; dropped, the metrics up to step {resume_step} are kept",
              file=sys.stderr)
    return keep


def _backend(module: str, flag: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LatentVLAError(f"{flag} needs the {extra} package: pip install 'latentvla[{extra}]'") from None


def _start_run(flag: str, title: str, name: str, init: Callable[[], Any]) -> Any:
    try:
        return init()
    except Exception as e:
        raise LatentVLAError(f"{flag}: {title} could not start a run ({type(e).__name__}: {e}); log in with "
                             f"`{name} login` (or set {name.upper()}_API_KEY), or log locally with "
                             f"{name.upper()}_MODE=offline") from e


class JSONLLogger:
    def __init__(self, path: str | Path, resume_step: int | None = None):
        from latentvla.utils.atomic import atomic_write_text

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            keep = _records_up_to(self.path, resume_step)
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
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
        wandb = _backend("wandb", "--use_wandb True", "wandb")
        self._run = _start_run("--use_wandb True", "W&B", "wandb", lambda: wandb.init(
            project=project, entity=entity, name=name, id=_wandb_run_id(name), config=config, dir=str(run_dir),
            resume="allow" if resume else None))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        if _failure() is not None:
            self._run.finish(exit_code=1)  # shown as failed, not finished
        else:
            self._run.finish()


class SwanLabLogger:
    def __init__(self, project: str, name: str, config: dict, run_dir: Path):
        self._swanlab = swanlab = _backend("swanlab", "ENABLE_SWANLAB=1", "swanlab")
        # experiment_name / logdir: the names every swanlab release accepts (newer ones alias name / log_dir).
        _start_run("ENABLE_SWANLAB=1", "SwanLab", "swanlab", lambda: swanlab.init(
            project=project, experiment_name=name, config=config, logdir=str(run_dir / "swanlab")))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._swanlab.log(dict(metrics), step=step)

    def close(self) -> None:
        err = _failure()
        if err is None:
            self._swanlab.finish()
        else:
            state = "aborted" if isinstance(err, KeyboardInterrupt) else "crashed"
            self._swanlab.finish(state=state, error=f"{type(err).__name__}: {err}")


class TensorBoardLogger:
    def __init__(self, log_dir: Path, resume_step: int | None = None, config: dict | None = None):
        SummaryWriter = _backend("torch.utils.tensorboard", "--use_tensorboard True", "tensorboard").SummaryWriter
        # purge_step: TensorBoard discards the earlier files' events from the resumed step on, so
        # the steps redone after a resume are not shown twice.
        self._w = SummaryWriter(str(log_dir), purge_step=None if resume_step is None else resume_step + 1)
        if config is not None:
            text = json.dumps(config, indent=2, default=str)
            self._w.add_text("config", "    " + text.replace("\n", "\n    "), resume_step or 0)

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
        # Close every backend even if one fails to (e.g. a W&B flush error), then raise the first error,
        # unless the run is already failing: its own error is the one to show.
        first: BaseException | None = None
        for lg in self.loggers:
            try:
                lg.close()
            except Exception as e:
                first = first or e
        if first is not None:
            if _failure() is None:
                raise first
            print(f"[latentvla train] warning: closing a metric logger failed: {type(first).__name__}: {first}",
                  file=sys.stderr)


def swanlab_enabled() -> bool:
    return os.environ.get("ENABLE_SWANLAB", "").strip().lower() in ("1", "true", "yes", "on")


def build_loggers(run_dir: Path, *, resume_step: int | None, run_name: str, config: dict,
                  use_wandb: bool = False, wandb_project: str = "latentvla", wandb_entity: str | None = None,
                  use_tensorboard: bool = False) -> MultiLogger:
    loggers: list = [JSONLLogger(run_dir / "metrics.jsonl", resume_step=resume_step)]
    try:
        if use_wandb:
            loggers.append(WandbLogger(wandb_project, wandb_entity, run_name, config, run_dir, resume_step is not None))
        if swanlab_enabled():
            loggers.append(SwanLabLogger(wandb_project, run_name, config, run_dir))
        if use_tensorboard:
            loggers.append(TensorBoardLogger(run_dir / "tensorboard", resume_step=resume_step, config=config))
    except BaseException:
        MultiLogger(loggers).close()  # a backend that started must not be left open (reported as failed)
        raise
    return MultiLogger(loggers)
