"""Observation / action conversions shared by the simulator evaluators (no simulator imports).

- `flip_image`: robosuite (LIBERO) renders upside down; the training data was flipped on both
  axes, so evaluation flips the same way (`img[::-1, ::-1]`).
- `gripper_dataset_to_env`: datasets store the gripper as 1 = open, 0 = close; the LIBERO /
  robosuite controller wants -1 = open, +1 = close. g_env = -(2 g - 1), binarized by sign
  (a value of exactly 0.5, i.e. g_env == 0, counts as open).
- `quat_to_axis_angle`: robosuite quaternions are (x, y, z, w); proprio uses the axis-angle.
"""

from __future__ import annotations

import math

import numpy as np

from latentvla.errors import LatentVLAError


def flip_image(image: np.ndarray) -> np.ndarray:
    """Rotate an HxWxC image by 180 degrees (flip both axes); returns a contiguous copy."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise LatentVLAError(f"flip_image: expected an HxWxC image, got shape {image.shape}")
    return np.ascontiguousarray(image[::-1, ::-1])


def gripper_dataset_to_env(gripper: np.ndarray | float, binarize: bool = True) -> np.ndarray:
    """Map gripper values from the dataset convention (1 open, 0 close) to the env's (-1 open, +1 close)."""
    g = -(2.0 * np.asarray(gripper, dtype=np.float64) - 1.0)
    if binarize:
        g = np.where(g > 0.0, 1.0, -1.0)
    return g


def convert_actions_to_env(actions: np.ndarray, gripper_dim: int | None, binarize: bool = True) -> np.ndarray:
    """Copy of `actions[..., D]` with the gripper dim converted by `gripper_dataset_to_env`."""
    out = np.array(actions, dtype=np.float64, copy=True)
    if gripper_dim is not None:
        out[..., gripper_dim] = gripper_dataset_to_env(out[..., gripper_dim], binarize=binarize)
    return out


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) from a unit quaternion in (x, y, z, w) order; zero rotation maps to zeros."""
    q = np.asarray(quat, dtype=np.float64).reshape(4).copy()
    w = min(max(q[3], -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0, abs_tol=1e-12):
        return np.zeros(3, dtype=np.float64)
    return q[:3] * 2.0 * math.acos(w) / den
