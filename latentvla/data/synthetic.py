"""Small synthetic RLDS datasets in the real on-disk layout, for tests, demos and benchmarks.

    write_synthetic_dataset(root, name="libero_goal_no_noops", num_episodes=4, steps=20, image_size=64)

writes `<root>/<name>/<version>/` through `TFDSWriter` with the key layout of the dataset family
(`layout="libero"` = the public `modified_libero_rlds` release: `observation/image`,
`observation/wrist_image`, `observation/state` (8), `observation/joint_state` (7), `action` (7),
`discount`, `reward`, `is_first`, `is_last`, `is_terminal`, `language_instruction`,
`episode_metadata/file_path`; also "aloha", "jaka", "metaworld"). `layout=None` picks it from
the name.

Content is structured so models can learn from it:
- actions are smooth (per-episode sinusoids); the gripper (LIBERO convention: -1 open, +1 close in
  the raw data) closes halfway through the episode;
- with `frames_follow_actions=True` (default) the primary image shows a square whose position is
  the running sum of action dims 0 and 1 (the wrist image: dim 2 and the gripper), so the change
  between frames t and t+k is determined by the actions in between — a LAM can learn it;
- the state is the integrated position (+ gripper fingers), so proprio and actions agree.
Pass `action_fn(episode, t, num_steps, rng) -> [action_dim]` / `image_fn(episode, t, camera, action_so_far) -> uint8`
to override, `extra_step_features={path: FeatureSpec}` + `extra_fn(episode, t) -> {key: value}` to add keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.data.features import FeatureSpec, image_feature, scalar_feature, tensor_feature, text_feature
from latentvla.data.tfds import TFDSWriter

LAYOUTS: dict[str, dict[str, Any]] = {
    "libero": {"cameras": ("image", "wrist_image"), "state_dim": 8, "action_dim": 7, "joint_state_dim": 7,
               "gripper": "libero"},
    "aloha": {"cameras": ("image", "left_wrist_image", "right_wrist_image", "low_cam_image"), "state_dim": 14,
              "action_dim": 14, "joint_state_dim": 0, "gripper": None},
    "jaka": {"cameras": ("head_camera_image", "low_cam_image"), "state_dim": 7, "action_dim": 7, "joint_state_dim": 0,
             "gripper": "absolute"},
    "metaworld": {"cameras": ("image", "wrist_image"), "state_dim": 4, "action_dim": 4, "joint_state_dim": 0,
                  "gripper": "metaworld"},
}

DEFAULT_INSTRUCTIONS = (
    "put the bowl on the plate",
    "open the top drawer of the cabinet",
    "push the plate to the front of the stove",
    "put the cream cheese in the bowl",
)


def layout_for_name(name: str) -> str:
    n = name.lower()
    if n.startswith("aloha") or "robotwin" in n:
        return "aloha"
    if n.startswith("metaworld") or n.startswith("mw_"):
        return "metaworld"
    if n in ("2_bowls", "3_bowls", "4_bowls", "wipe") or n.startswith("jaka"):
        return "jaka"
    return "libero"


def synthetic_features(layout: str = "libero", image_size: int = 64, encoding: str = "jpeg",
                       extra_step_features: Mapping[str, FeatureSpec] | None = None) -> dict[str, FeatureSpec]:
    lay = LAYOUTS[layout]
    f: dict[str, FeatureSpec] = {}
    for cam in lay["cameras"]:
        f[f"steps/observation/{cam}"] = image_feature((image_size, image_size, 3), encoding)
    f["steps/observation/state"] = tensor_feature((lay["state_dim"],), "float32")
    if lay["joint_state_dim"]:
        f["steps/observation/joint_state"] = tensor_feature((lay["joint_state_dim"],), "float32")
    f["steps/action"] = tensor_feature((lay["action_dim"],), "float32")
    for k in ("discount", "reward"):
        f[f"steps/{k}"] = scalar_feature("float32")
    for k in ("is_first", "is_last", "is_terminal"):
        f[f"steps/{k}"] = scalar_feature("bool")
    f["steps/language_instruction"] = text_feature()
    f["episode_metadata/file_path"] = text_feature()
    for path, spec in (extra_step_features or {}).items():
        f[path if path.startswith("steps/") else f"steps/{path}"] = spec
    return f


def smooth_actions(episode: int, num_steps: int, action_dim: int, gripper: str | None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, episode])
    t = np.arange(num_steps, dtype=np.float64)[:, None]
    freq = rng.uniform(0.05, 0.2, size=(1, action_dim))
    phase = rng.uniform(0, 2 * np.pi, size=(1, action_dim))
    amp = rng.uniform(0.3, 0.9, size=(1, action_dim))
    a = amp * np.sin(freq * t + phase)
    if gripper in ("libero", "absolute", "metaworld"):
        close = (np.arange(num_steps) >= num_steps // 2).astype(np.float64)
        a[:, -1] = 2 * close - 1  # -1 open, +1 close (raw LIBERO / Meta-World convention)
    return a.astype(np.float32)


def _render(size: int, center: np.ndarray, color: Sequence[int], background: Sequence[int],
            radius: float) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.asarray(background, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = (np.clip(center, 0.0, 1.0) * (size - 1))
    r = max(1.0, radius * size)
    mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    img[mask] = np.asarray(color, np.uint8)
    return img


def write_synthetic_dataset(
    root: str | os.PathLike,
    name: str = "libero_goal_no_noops",
    num_episodes: int = 4,
    steps: int | Sequence[int] = 20,
    image_size: int = 64,
    *,
    version: str = "1.0.0",
    layout: str | None = None,
    seed: int = 0,
    action_fn: Callable[[int, int, int, np.random.Generator], np.ndarray] | None = None,
    image_fn: Callable[[int, int, str, np.ndarray], np.ndarray] | None = None,
    frames_follow_actions: bool = True,
    instructions: Sequence[str] = DEFAULT_INSTRUCTIONS,
    encoding: str = "jpeg",
    val_episodes: int = 0,
    extra_step_features: Mapping[str, FeatureSpec] | None = None,
    extra_fn: Callable[[int, int], Mapping[str, Any]] | None = None,
    max_shard_bytes: int = 256 << 20,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset; returns the builder dir `<root>/<name>/<version>`.

    `steps`: one length for all episodes or one per episode (train then val).
    """
    layout = layout or layout_for_name(name)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    lay = LAYOUTS[layout]
    total = num_episodes + val_episodes
    lengths = [int(steps)] * total if isinstance(steps, (int, np.integer)) else [int(s) for s in steps]
    if len(lengths) != total:
        raise ValueError(f"steps has {len(lengths)} entries, expected {total}")
    feats = synthetic_features(layout, image_size, encoding, extra_step_features)
    out = Path(root) / name / version
    splits = ["train"] + (["val"] if val_episodes else [])
    with TFDSWriter(out, feats, splits=splits, max_shard_bytes=max_shard_bytes, overwrite=overwrite) as w:
        for e in range(total):
            w.add_episode(_episode(e, lengths[e], lay, image_size, seed, action_fn, image_fn, frames_follow_actions,
                                   instructions, extra_fn, feats), "train" if e < num_episodes else "val")
    return out


def _episode(e, T, lay, size, seed, action_fn, image_fn, follow, instructions, extra_fn, feats) -> dict:
    rng = np.random.default_rng([seed, e, 1])
    adim, sdim = lay["action_dim"], lay["state_dim"]
    if action_fn is not None:
        actions = np.stack([np.asarray(action_fn(e, t, T, rng), np.float32).reshape(adim)
                            for t in range(T)]) if T else np.zeros((0, adim), np.float32)
    else:
        actions = smooth_actions(e, T, adim, lay["gripper"], seed)
    # Position before each step = running sum of the previous actions (so frame t+1 reflects action t).
    if T:
        pos = np.concatenate([np.zeros((1, adim), np.float32), np.cumsum(actions, 0)[:-1]], 0) * 0.05
    else:
        pos = np.zeros((0, adim), np.float32)
    state = np.zeros((T, sdim), np.float32)
    k = min(sdim, adim)
    state[:, :k] = pos[:, :k]
    if lay["gripper"] == "libero" and T:  # two finger positions, +-0.04 open
        fingers = np.where(actions[:, -1:] > 0, 0.0, 0.04).astype(np.float32)
        state[:, -2:] = np.concatenate([fingers, -fingers], 1)
    ep_bg = rng.integers(0, 120, size=3)
    ep: dict[str, Any] = {}
    for ci, cam in enumerate(lay["cameras"]):
        frames = np.empty((T, size, size, 3), np.uint8)
        for t in range(T):
            if image_fn is not None:
                frames[t] = image_fn(e, t, cam, actions[:t])
            elif follow:
                dims = (0, 1) if ci == 0 else (2 % adim, adim - 1)
                center = 0.5 + pos[t, list(dims)] * (1.0 if ci == 0 else 0.5)
                color = (255, 220 - 40 * ci, 40 + 60 * ci) if actions[t, -1] <= 0 else (40, 255, 120)
                frames[t] = _render(size, center, color, ep_bg, 0.12)
            else:
                frames[t] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        ep[f"observation/{cam}"] = frames
    ep["observation/state"] = state
    if lay["joint_state_dim"]:
        joints = np.arange(lay["joint_state_dim"], dtype=np.float32) * 0.1
        ep["observation/joint_state"] = np.tile(joints, (T, 1)) + pos[:, :1]
    ep["action"] = actions
    ep["discount"] = np.ones(T, np.float32)
    ep["reward"] = (np.arange(T) == T - 1).astype(np.float32)
    ep["is_first"] = np.arange(T) == 0
    ep["is_last"] = np.arange(T) == T - 1
    ep["is_terminal"] = np.arange(T) == T - 1
    ep["language_instruction"] = [instructions[e % len(instructions)]] * T
    ep["episode_metadata/file_path"] = f"/synthetic/episode_{e:05d}.hdf5"
    if extra_fn is not None and T:
        per_step = [dict(extra_fn(e, t)) for t in range(T)]
        for key in per_step[0]:
            ep[key] = np.stack([np.asarray(d[key]) for d in per_step])
    for path, spec in feats.items():  # declared extra keys nobody filled: zeros
        key = path[len("steps/"):] if path.startswith("steps/") else path
        if key not in ep:
            ep[key] = np.zeros((T, *spec.shape), spec.np_dtype)
    return ep
