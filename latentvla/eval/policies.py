"""Policies the evaluators can run: the trained VLA (local), a remote one, or random / zero.

All share `predict_action(images, instruction, proprio) -> float [P, D]` in robot units with the
dataset's gripper convention (1 open, 0 close), plus `.platform`, `.chunk_len` and `reset()`.

- `RandomPolicy`: arm dims uniform in [-1, 1], gripper 0 or 1; seeded (re-seeded per episode
  through `reset(seed)`), to exercise the environment side without a model.
- `ZeroPolicy`: no motion with the gripper held open.
- `build_policy(spec)`: "vla" -> `latentvla.vla.policy.VLAPolicy.from_pretrained(checkpoint)`;
  with `server` set -> `latentvla.serve.client.PolicyClient` (whatever policy the server runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from latentvla.errors import LatentVLAError
from latentvla.robots import Platform, get_platform


class _BaselinePolicy:
    def __init__(self, platform: Platform, seed: int = 0):
        self.platform = platform
        self.chunk_len = platform.chunk_len
        self.num_images = platform.num_cameras
        self.use_proprio = True
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def predict_action(self, images: Sequence[np.ndarray], instruction: str,
                       proprio: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


class RandomPolicy(_BaselinePolicy):
    def predict_action(self, images, instruction, proprio=None):
        p = self.platform
        actions = self._rng.uniform(-1.0, 1.0, size=(p.chunk_len, p.action_dim))
        if p.gripper_dim is not None:
            actions[:, p.gripper_dim] = self._rng.integers(0, 2, size=p.chunk_len)
        return actions.astype(np.float32)


class ZeroPolicy(_BaselinePolicy):
    def predict_action(self, images, instruction, proprio=None):
        p = self.platform
        actions = np.zeros((p.chunk_len, p.action_dim), dtype=np.float32)
        if p.gripper_dim is not None:
            actions[:, p.gripper_dim] = 1.0  # open
        return actions


@dataclass(frozen=True)
class PolicySpec:
    """Picklable description of a policy, so each worker process can build its own."""

    kind: str = "vla"  # vla | random | zero
    checkpoint: str = ""
    server: str | None = None  # HOST:PORT
    token: str | None = None
    platform: str = "libero"  # for random / zero
    device: str | None = None
    unnorm_key: str | None = None
    seed: int = 7


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LatentVLAError(f"--policy_server: expected HOST:PORT (e.g. 127.0.0.1:8000), got {text!r}")
    return host.strip("[]"), int(port)


def build_policy(spec: PolicySpec):
    if spec.server:
        from latentvla.serve.client import PolicyClient

        host, port = parse_host_port(spec.server)
        return PolicyClient(host, port, token=spec.token)
    if spec.kind == "random":
        return RandomPolicy(get_platform(spec.platform), seed=spec.seed)
    if spec.kind == "zero":
        return ZeroPolicy(get_platform(spec.platform), seed=spec.seed)
    if spec.kind != "vla":
        raise LatentVLAError(f"--policy: expected vla, random or zero, got {spec.kind!r}")
    if not spec.checkpoint:
        raise LatentVLAError("--pretrained_checkpoint is required with --policy vla (or use --policy_server HOST:PORT)")
    try:
        from latentvla.vla.policy import VLAPolicy
    except ImportError as e:
        raise LatentVLAError(f"--policy vla: cannot import latentvla.vla.policy.VLAPolicy ({e})") from None
    return VLAPolicy.from_pretrained(spec.checkpoint, device=spec.device, unnorm_key=spec.unnorm_key)


def reset_policy(policy, seed: int) -> None:
    """Reset per-episode policy state; baseline policies also take the episode seed."""
    if isinstance(policy, _BaselinePolicy):
        policy.reset(seed)
    elif callable(getattr(policy, "reset", None)):
        policy.reset()
