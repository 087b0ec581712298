"""Checkpoint directories of a run: `<run_dir>/checkpoints/step_<N>/`.

A checkpoint is built under a temporary name and renamed into place when complete; a
`COMPLETE` marker inside is written last before the rename, so a directory without it (from an
older, crashed writer or a copy in progress) is never resumed from. `checkpoints/latest` holds
the name of the newest complete one. Only the newest `keep` complete checkpoints are kept.

Contents (written by the trainer's save function): the policy checkpoint files
(`model.safetensors`, `config.json`, `dataset_statistics.json`, ...) plus `training_state.pt`
(optimizer, scheduler, step, data-stream position, RNG state of every rank).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

from latentvla.utils.atomic import atomic_directory, atomic_write_text

COMPLETE_MARKER = "COMPLETE"
TRAINING_STATE = "training_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointManager:
    def __init__(self, root: str | Path, keep: int = 3):
        self.root = Path(root)
        self.keep = int(keep)

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step}"

    def complete(self) -> list[tuple[int, Path]]:
        """(step, dir) of every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and d.is_dir() and (d / COMPLETE_MARKER).is_file():
                out.append((int(m.group(1)), d))
        return sorted(out)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1][1] if done else None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Build step_<step>/ with `write(tmp_dir)`, mark it complete, publish it, prune old ones."""
        target = self.step_dir(step)
        with atomic_directory(target, overwrite=True) as tmp:
            write(tmp)
            (tmp / COMPLETE_MARKER).write_text(f"{step}\n")
        atomic_write_text(self.root / "latest", target.name + "\n")
        self.prune()
        return target

    def prune(self) -> None:
        if self.keep <= 0:
            return
        done = self.complete()
        for _, d in done[:-self.keep]:
            shutil.rmtree(d, ignore_errors=True)
