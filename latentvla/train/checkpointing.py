"""Checkpoint directories of a run: `<run_dir>/checkpoints/step_<N>/`.

A checkpoint is built under a temporary name and renamed into place when complete; a
`COMPLETE` marker inside is written last before the rename, so a directory without it (from an
older, crashed writer or a copy in progress) is never resumed from. `checkpoints/latest` holds
the name of the newest complete one. Only the newest `keep` complete checkpoints are kept, and
only the newest keeps `training_state.pt` (optimizer state is twice the weights; exact resume
needs just the newest): older ones stay loadable policies and warm-start sources.

Contents (written by the trainer's save function): the policy checkpoint files
(`model.safetensors`, `config.json`, `dataset_statistics.json`, ...) plus `training_state.pt`
(optimizer, scheduler, step, data-stream position, RNG state of every rank).

Recovery: `clean_stale_temps()` removes what killed writers left (`.step_N.tmp-*`, `.latest.tmp-*`;
never a live writer's); `resume_point()` verifies the newest checkpoint's files (a header check, no
load) and, when one is damaged, falls back to the newest older checkpoint that is intact and still
has `training_state.pt`; `set_aside()` renames the newer ones out of the way (`step_N.damaged`,
`step_N.superseded`) so the resumed run neither counts nor prunes them. Nothing is deleted.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from latentvla.utils.atomic import StaleTemps, atomic_directory, atomic_write_text, remove_stale_temps

COMPLETE_MARKER = "COMPLETE"
TRAINING_STATE = "training_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointManager:
    """Also the `Trainer`'s checkpoint store: `save_training` / `load_training` write and read one
    step directory with the weights (`save_weights(dir, state)` / `load_weights(dir, model)`) and
    `training_state.pt`. Another store (the action tokenizer's single files)
    provides the same four methods: `clean_stale_temps`, `save_training`, `load_training`, `latest`."""

    def __init__(self, root: str | Path, keep: int = 3, save_weights: Callable | None = None,
                 load_weights: Callable | None = None):
        self.root = Path(root)
        self.keep = int(keep)
        self.save_weights, self.load_weights = save_weights, load_weights

    def save_training(self, step: int, weights: dict, state: dict) -> Path:
        import torch

        def write(tmp: Path) -> None:
            self.save_weights(tmp, weights)
            torch.save(state, tmp / TRAINING_STATE)

        return self.save(step, write)

    def load_training(self, directory: str | Path, model) -> dict:
        """Load the weights of `directory` into `model` and return its training state."""
        from latentvla.errors import LatentVLAError
        from latentvla.utils.weight_files import load_torch_file

        directory = Path(directory)
        if not (directory / TRAINING_STATE).is_file():
            raise LatentVLAError(
                f"{directory} holds weights only (no {TRAINING_STATE}: only the newest checkpoint of a run keeps "
                "the optimizer state); warm-start from it in a new run with --from_pretrained True "
                "--pretrained_checkpoint DIR")
        self.load_weights(directory, model)  # before wrapping: FSDP shards what is loaded
        return load_torch_file(directory / TRAINING_STATE,
                               "resume from an intact checkpoint, or warm-start from this one's weights with "
                               "--from_pretrained True --pretrained_checkpoint DIR")

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
        done = self.complete()
        if self.keep > 0:
            for _, d in done[:-self.keep]:
                shutil.rmtree(d, ignore_errors=True)
            done = done[-self.keep:]
        for _, d in done[:-1]:  # weights only from here on (the newest one resumes the run)
            (d / TRAINING_STATE).unlink(missing_ok=True)

    def clean_stale_temps(self) -> StaleTemps:
        """Remove the temporaries of killed writers (a finished one whose swap-in was cut is restored)."""
        return remove_stale_temps(self.root, complete=lambda d: (d / COMPLETE_MARKER).is_file())

    def resume_point(self) -> ResumePoint:
        """The checkpoint to resume from: the newest complete one whose files are intact and that has
        the training state. `newer` lists the complete checkpoints after it, each with its problem."""
        point = ResumePoint()
        for _, d in reversed(self.complete()):
            problem = damage(d)
            # a damaged training state alone leaves the weights usable for a warm start
            if point.warm_start is None and (problem is None or problem[0].name == TRAINING_STATE):
                point.warm_start = d
            if problem is None and (d / TRAINING_STATE).is_file():
                point.path = d
                return point
            point.newer.append((d, problem))
        return point

    def set_aside(self, point: ResumePoint) -> list[tuple[Path, Path]]:
        """Rename the checkpoints newer than `point.path` to `step_N.damaged` / `step_N.superseded`
        (kept; not counted, pruned or resumed from any more) and point `latest` at `point.path`."""
        moved = []
        for d, problem in point.newer:
            base = d.with_name(d.name + (".damaged" if problem is not None else ".superseded"))
            target, n = base, 1
            while target.exists():
                target, n = base.with_name(f"{base.name}-{n}"), n + 1
            d.rename(target)
            moved.append((d, target))
        if point.path is not None:
            atomic_write_text(self.root / "latest", point.path.name + "\n")
        return moved


@dataclass
class ResumePoint:
    path: Path | None = None  # None: no checkpoint can resume the run exactly
    newer: list[tuple[Path, tuple[Path, str] | None]] = field(default_factory=list)  # (dir, damage or None)
    warm_start: Path | None = None  # newest checkpoint with intact weights (for --from_pretrained)


def write_into(directory: Path, write: Callable[[Path], object]) -> None:
    """Run a writer that makes its own directory (`write(path)`), then move its files into `directory`."""
    import os

    part = directory / "_part"
    write(part)
    for f in part.iterdir():
        os.replace(f, directory / f.name)
    part.rmdir()


def damage(directory: Path) -> tuple[Path, str] | None:
    """(file, problem) of the first damaged weight / state file of a checkpoint; None when intact."""
    from latentvla.utils.weight_files import safetensors_problem, torch_file_problem

    for f in sorted(directory.glob("*.safetensors")):
        if (problem := safetensors_problem(f)) is not None:
            return f, problem
    state = directory / TRAINING_STATE
    if state.is_file() and (problem := torch_file_problem(state)) is not None:
        return state, problem
    return None
