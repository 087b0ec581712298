"""Policies the evaluators can run: the trained VLA (local), a remote one, or random / zero.

All share `predict_action(images, instruction, proprio) -> float [P, D]` in robot units with the
dataset's gripper convention (1 open, 0 close), plus `.platform`, `.chunk_len` and `reset()`.

- `RandomPolicy`: arm dims uniform in [-1, 1], gripper 0 or 1; seeded (re-seeded per episode
  through `reset(seed)`), to exercise the environment side without a model.
- `ZeroPolicy`: no motion with the gripper held open.
- `build_policy(spec)`: "vla" -> `latentvla.vla.policy.VLAPolicy.from_pretrained(checkpoint)`
  (with `decode_tokens`, la_tok only: actions decoded from the predicted codes, for analysis);
  with `server` set -> `latentvla.serve.client.PolicyClient` (whatever policy the server runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latentvla.errors import LatentVLAError
from latentvla.robots import Platform, get_platform


class _BaselinePolicy:
    def __init__(self, platform: Platform, seed: int = 0):
        self.platform = platform
        self.chunk_len = platform.chunk_len
        self.num_images = platform.num_cameras
        self.use_proprio = True
        self.image_size = None  # takes images at any size
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
    vlm_path: str | None = None  # backbone dir when the one recorded in the checkpoint moved
    center_crop: bool | None = None  # override the checkpoint's (image_aug) center crop of camera frames
    decode_tokens: bool = False  # la_tok: actions from the predicted codes through the action tokenizer
    action_tokenizer_ckpt: str | None = None  # that tokenizer, when the one recorded in the checkpoint moved


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LatentVLAError(f"--policy_server: expected HOST:PORT (e.g. 127.0.0.1:8000), got {text!r}")
    return host.strip("[]"), int(port)


def build_policy(spec: PolicySpec):
    if spec.decode_tokens and (spec.server or spec.kind != "vla"):
        raise LatentVLAError("--decode_tokens applies to a local --policy vla checkpoint (for a policy server, start "
                             "`latentvla serve` with --decode_tokens True)")
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
    policy = VLAPolicy.from_pretrained(spec.checkpoint, device=spec.device, unnorm_key=spec.unnorm_key,
                                       vlm_path=spec.vlm_path, decode_tokens=spec.decode_tokens,
                                       action_tokenizer_ckpt=spec.action_tokenizer_ckpt)
    if spec.center_crop is not None:
        policy.center_crop = bool(spec.center_crop)
    return policy


@dataclass(frozen=True)
class PolicyInputSpec:
    """What a policy wants to see: number of cameras, proprio or not, and the training image size."""

    num_images: int
    use_proprio: bool
    image_size: int | None  # None: the policy takes any size


def policy_input_spec(policy) -> PolicyInputSpec:
    """Read the input spec from a VLAPolicy (model.processor / model.cfg), a PolicyClient or a baseline."""
    model = getattr(policy, "model", None)
    sources = [getattr(model, "processor", None), getattr(model, "cfg", None), policy]

    def find(name):
        for obj in sources:
            v = getattr(obj, name, None) if obj is not None else None
            if v is not None:
                return v
        return None

    num_images = find("num_images") or find("num_images_in_input")
    if num_images is None:
        wrist = find("use_wrist_image")
        platform = getattr(policy, "platform", None)
        num_images = (platform.num_cameras if platform is not None else 2) if wrist is None or wrist else 1
    use_proprio = find("use_proprio")
    image_size = find("image_size") or find("default_image_size")
    return PolicyInputSpec(int(num_images), True if use_proprio is None else bool(use_proprio),
                           None if image_size is None else int(image_size))


def reset_policy(policy, seed: int) -> None:
    """Reset per-episode policy state; baseline policies also take the episode seed."""
    if isinstance(policy, _BaselinePolicy):
        policy.reset(seed)
    elif callable(getattr(policy, "reset", None)):
        policy.reset()
