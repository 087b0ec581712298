"""Robot platforms: chunk length, action/proprio dims, normalization, gripper convention.

A platform is chosen by the dataset registry entry (or `--robot`), never by sniffing the command
line. Users may register their own with `register_platform` (or from a dataset config file).

Normalization (`bounds_q99` / `bounds`) maps masked dims to [-1, 1]:
    x_n = clip(2 (x - lo) / (hi - lo + 1e-8) - 1, -1, 1)      lo, hi = q01, q99 (or min, max)
dims where lo == hi map to 0; unmasked dims pass through. `unnormalize` is the exact inverse on
the same dims (for values inside [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from latentvla.config import arg
from latentvla.errors import LatentVLAError

Normalization = Literal["bounds_q99", "bounds", "none"]
NORMALIZATIONS = ("bounds_q99", "bounds", "none")


@dataclass(frozen=True)
class Platform:
    """One robot platform. Masks are per dim: True = normalized."""

    name: str
    chunk_len: int
    action_dim: int
    proprio_dim: int
    normalization: Normalization
    action_norm_mask: tuple[bool, ...]
    proprio_norm_mask: tuple[bool, ...]
    # Dims that are absolute targets (repeated past the episode end); the rest are deltas (zeroed).
    absolute_action_dims: tuple[int, ...] = ()
    # Index of the gripper dim in the action (None when there is no single gripper dim).
    gripper_dim: int | None = None
    num_cameras: int = 2
    description: str = ""

    def __post_init__(self) -> None:
        validate_platform(self)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "chunk_len": self.chunk_len,
            "action_dim": self.action_dim,
            "proprio_dim": self.proprio_dim,
            "normalization": self.normalization,
            "action_norm_mask": list(self.action_norm_mask),
            "proprio_norm_mask": list(self.proprio_norm_mask),
            "absolute_action_dims": list(self.absolute_action_dims),
            "gripper_dim": self.gripper_dim,
            "num_cameras": self.num_cameras,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "platform") -> Platform:
        required = ("name", "chunk_len", "action_dim", "proprio_dim")
        missing = [k for k in required if k not in d]
        if missing:
            raise LatentVLAError(f"{source}: platform lacks key(s) {', '.join(missing)}")
        a, p = int(d["action_dim"]), int(d["proprio_dim"])
        try:
            return cls(
                name=str(d["name"]),
                chunk_len=int(d["chunk_len"]),
                action_dim=a,
                proprio_dim=p,
                normalization=d.get("normalization", "bounds_q99"),
                action_norm_mask=tuple(bool(x) for x in d.get("action_norm_mask", [True] * a)),
                proprio_norm_mask=tuple(bool(x) for x in d.get("proprio_norm_mask", [True] * p)),
                absolute_action_dims=tuple(int(x) for x in d.get("absolute_action_dims", [])),
                gripper_dim=None if d.get("gripper_dim") is None else int(d["gripper_dim"]),
                num_cameras=int(d.get("num_cameras", 2)),
                description=str(d.get("description", "")),
            )
        except LatentVLAError as e:
            raise LatentVLAError(f"{source}: {e}") from None


def validate_platform(p: Platform) -> None:
    where = f"platform {p.name!r}"
    if not p.name:
        raise LatentVLAError("platform name must be non-empty")
    for key in ("chunk_len", "action_dim", "proprio_dim", "num_cameras"):
        v = getattr(p, key)
        if not isinstance(v, int) or v < (0 if key == "proprio_dim" else 1):
            raise LatentVLAError(f"{where}: {key} must be a positive integer, got {v!r}")
    if p.normalization not in NORMALIZATIONS:
        raise LatentVLAError(f"{where}: normalization must be one of {', '.join(NORMALIZATIONS)}, got "
                             f"{p.normalization!r}")
    if len(p.action_norm_mask) != p.action_dim:
        raise LatentVLAError(f"{where}: action_norm_mask has {len(p.action_norm_mask)} entries, expected "
                             f"action_dim={p.action_dim}")
    if len(p.proprio_norm_mask) != p.proprio_dim:
        raise LatentVLAError(f"{where}: proprio_norm_mask has {len(p.proprio_norm_mask)} entries, expected "
                             f"proprio_dim={p.proprio_dim}")
    bad = [d for d in p.absolute_action_dims if not 0 <= d < p.action_dim]
    if bad:
        raise LatentVLAError(f"{where}: absolute_action_dims {bad} out of range [0, {p.action_dim})")
    if p.gripper_dim is not None and not 0 <= p.gripper_dim < p.action_dim:
        raise LatentVLAError(f"{where}: gripper_dim {p.gripper_dim} out of range [0, {p.action_dim})")


def _mask(n: int, off: tuple[int, ...] = ()) -> tuple[bool, ...]:
    return tuple(i not in off for i in range(n))


_BUILTIN = [
    Platform("libero", 8, 7, 8, "bounds_q99", _mask(7, (6,)), _mask(8), absolute_action_dims=(6,), gripper_dim=6,
             num_cameras=2, description="LIBERO (Franka, 6 EEF deltas + gripper 1 open / 0 close)"),
    Platform("calvin", 8, 7, 8, "bounds_q99", _mask(7, (6,)), _mask(8), absolute_action_dims=(6,), gripper_dim=6,
             num_cameras=2, description="CALVIN (Franka, relative EEF + gripper)"),
    Platform("aloha", 25, 14, 14, "bounds", _mask(14), _mask(14), absolute_action_dims=tuple(range(14)),
             num_cameras=3, description="RoboTwin 2.0 / ALOHA bimanual: 14 absolute joint positions, 3 cameras"),
    Platform("bridge", 5, 7, 7, "bounds_q99", _mask(7, (6,)), _mask(7), absolute_action_dims=(6,), gripper_dim=6,
             num_cameras=1, description="BridgeData V2 (WidowX, EEF deltas + gripper)"),
    Platform("jaka", 20, 7, 7, "bounds_q99", _mask(7), _mask(7), absolute_action_dims=tuple(range(7)),
             num_cameras=2, description="JAKA real robot: 7-dim EEF, head + low camera"),
    Platform("metaworld", 4, 4, 4, "bounds_q99", _mask(4, (3,)), _mask(4), absolute_action_dims=(3,), gripper_dim=3,
             num_cameras=2, description="Meta-World (Sawyer): xyz deltas + gripper; used by `latentvla demo`"),
]

_PLATFORMS: dict[str, Platform] = {p.name: p for p in _BUILTIN}


def register_platform(p: Platform, overwrite: bool = False) -> Platform:
    validate_platform(p)
    if p.name in _PLATFORMS and not overwrite and _PLATFORMS[p.name] != p:
        raise LatentVLAError(f"platform {p.name!r} is already registered with different values")
    _PLATFORMS[p.name] = p
    return p


def get_platform(name: str) -> Platform:
    try:
        return _PLATFORMS[name]
    except KeyError:
        raise LatentVLAError(f"unknown robot platform {name!r}; known: {', '.join(sorted(_PLATFORMS))}") from None


def platform_names() -> list[str]:
    return sorted(_PLATFORMS)


# ----------------------------------------------------------------------------- normalization

def _bounds(stats: Mapping, normalization: str) -> tuple[np.ndarray, np.ndarray]:
    lo_key, hi_key = ("q01", "q99") if normalization == "bounds_q99" else ("min", "max")
    try:
        return np.asarray(stats[lo_key], dtype=np.float64), np.asarray(stats[hi_key], dtype=np.float64)
    except KeyError as e:
        raise LatentVLAError(f"statistics lack {e.args[0]!r} needed for {normalization} normalization") from None


def normalize(x: np.ndarray, stats: Mapping, mask: np.ndarray | tuple[bool, ...], normalization: str) -> np.ndarray:
    """Normalize the masked dims of x[..., D] to [-1, 1] (float32)."""
    return _rescale(x, stats, mask, normalization, inverse=False)


def unnormalize(y: np.ndarray, stats: Mapping, mask: np.ndarray | tuple[bool, ...], normalization: str) -> np.ndarray:
    """Exact inverse of `normalize` on the masked dims (constant dims return lo)."""
    return _rescale(y, stats, mask, normalization, inverse=True)


def _rescale(x, stats: Mapping, mask, normalization: str, inverse: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if normalization == "none":
        return x.astype(np.float32)
    lo, hi = _bounds(stats, normalization)
    mask = np.asarray(mask, dtype=bool)
    if lo.shape[-1] != x.shape[-1] or mask.shape[-1] != x.shape[-1]:
        raise LatentVLAError(f"{'unnormalize' if inverse else 'normalization'}: value has {x.shape[-1]} dims but "
                             f"statistics/mask have {lo.shape[-1]}/{mask.shape[-1]}")
    span = hi - lo
    if inverse:
        y = np.where(span == 0, lo, (np.clip(x, -1.0, 1.0) + 1.0) / 2.0 * (span + 1e-8) + lo)
    else:
        y = np.where(span == 0, 0.0, np.clip(2.0 * (x - lo) / (span + 1e-8) - 1.0, -1.0, 1.0))
    return np.where(mask, y, x).astype(np.float32)


# ----------------------------------------------------------------------------- CLI

@dataclass
class RobotsConfig:
    """List the robot platforms."""

    json: bool = arg(False, "Print JSON instead of a table.")


def print_platforms(cfg: RobotsConfig) -> int:
    import json

    rows = [_PLATFORMS[n] for n in platform_names()]
    if cfg.json:
        print(json.dumps([p.to_dict() for p in rows], indent=2))
        return 0
    print(f"{'platform':<10} {'chunk':>5} {'action':>6} {'proprio':>7} {'norm':<10} description")
    for p in rows:
        print(f"{p.name:<10} {p.chunk_len:>5} {p.action_dim:>6} {p.proprio_dim:>7} {p.normalization:<10} "
              f"{p.description}")
    return 0
