"""The one place a `--device` value becomes a `torch.device` (train, LAM trainers, annotation, the VLA)."""

from __future__ import annotations

import torch

from latentvla.errors import LatentVLAError


def resolve_device(device: str | torch.device | None, flag: str = "--device") -> torch.device:
    """None / "" / "auto": cuda when available, else cpu. Otherwise cpu, cuda or cuda:N, which must exist."""
    if device is None or device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LatentVLAError(f"{flag} {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise LatentVLAError(f"{flag} {device!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LatentVLAError(f"{flag} {device}: CUDA is not available on this machine (use --device cpu or leave "
                             "it out)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LatentVLAError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
