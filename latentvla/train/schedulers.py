"""Learning-rate schedules: constant, linear-warmup+cosine-decay, step-decay.

Each is a `torch.optim.lr_scheduler.LambdaLR` whose factor depends only on the step, so its
state is just the step counter (exact resume). Warm-up (`warmup_ratio` of the total steps,
linear from ~0 to the peak) applies to every schedule; with `constant` and no warm-up the lr
never changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from latentvla.errors import LatentVLAError


def lr_factor_fn(kind: str, total_steps: int, warmup_ratio: float = 0.0,
                 decay_steps: Sequence[int] = (), gamma: float = 0.1) -> Callable[[int], float]:
    """The multiplier of the peak lr before optimizer step `s` (0-based)."""
    total = max(1, int(total_steps))
    warmup = int(round(warmup_ratio * total))

    if kind == "constant":
        def after(step: int) -> float:
            return 1.0
    elif kind == "linear-warmup+cosine-decay":
        def after(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    elif kind == "step-decay":
        milestones = sorted(int(s) for s in decay_steps) or [int(0.8 * total)]

        def after(step: int) -> float:
            return gamma ** sum(step >= m for m in milestones)
    else:
        raise LatentVLAError(f"--lr_scheduler_type {kind!r} is unknown; expected constant, "
                             "linear-warmup+cosine-decay or step-decay")

    def f(step: int) -> float:
        return (step + 1) / (warmup + 1) if step < warmup else after(step)

    return f


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_ratio: float = 0.0,
                    decay_steps: Sequence[int] = (), gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(kind, total_steps, warmup_ratio, decay_steps,
                                                                     gamma))
