"""Policies the evaluators can run: the trained VLA (local), a remote one, or random / zero.

All share `predict_action(images, instruction, proprio) -> float [P, D]` in robot units with the
dataset's gripper convention (1 open, 0 close), plus `.platform`, `.chunk_len`, `reset()` and what they
take: `.num_images`, `.use_proprio`, `.image_size` (None: any), `.center_crop`, `.image_resample`.

- `RandomPolicy`: arm dims uniform in [-1, 1], gripper 0 or 1; seeded (re-seeded per episode
  through `reset(seed)`), to exercise the environment side without a model.
- `ZeroPolicy`: no motion with the gripper held open.
- `ExpertPolicy`: the simulator's scripted expert (Meta-World), the ceiling; the evaluation loop
  gives it each task's env (`bind_env`), whose `expert_action()` it returns, one action per call.
- `build_policy(spec)`: "vla" -> `latentvla.vla.policy.VLAPolicy.from_pretrained(checkpoint)`
  (with `decode_tokens`, la_tok only: actions decoded from the predicted codes, for analysis);
  with `server` set -> `latentvla.serve.client.PolicyClient` (whatever policy the server runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentvla.data.transforms import DEFAULT_RESAMPLE
from latentvla.errors import LatentVLAError
from latentvla.robots import Platform, get_platform


class _BaselinePolicy:
    def __init__(self, platform: Platform, seed: int = 0):
        self.platform = platform
        self.chunk_len = platform.chunk_len
        self.num_images = platform.num_cameras
        self.use_proprio = True
        self.image_size, self.center_crop, self.image_resample = None, False, DEFAULT_RESAMPLE  # any size
        self.needs_images = False  # the simulator may skip rendering
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)


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


class ExpertPolicy(_BaselinePolicy):
    env = None

    def bind_env(self, env) -> None:
        self.env = env

    def predict_action(self, images, instruction, proprio=None):
        if not callable(getattr(self.env, "expert_action", None)):
            raise LatentVLAError("--policy expert: this simulator has no scripted expert")
        return np.asarray(self.env.expert_action(), dtype=np.float32)[None]


BASELINES = {"random": RandomPolicy, "zero": ZeroPolicy, "expert": ExpertPolicy}


@dataclass(frozen=True)
class PolicySpec:
    """Picklable description of a policy, so each worker process can build its own."""

    kind: str = "vla"  # vla | random | zero | expert
    checkpoint: str = ""
    server: str | None = None  # HOST:PORT
    token: str | None = None
    platform: str = "libero"  # for the baselines
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


def resolve_policy_flags(cfg) -> dict[str, dict]:
    """A command's --pretrained_checkpoint / --vlm_path, in place: Hub repo ids -> local snapshots, a run dir or
    `latest` pointer -> the step dir it names. -> the Hub record of the flags that were repo ids (idempotent)."""
    from latentvla.utils.hub import resolve_model_flags

    hub: dict[str, dict] = {}
    if cfg.policy == "vla" and not getattr(cfg, "policy_server", None):  # before anything reads them
        hub = resolve_model_flags(cfg, {"pretrained_checkpoint": (), "vlm_path": ()})
    if cfg.policy == "vla" and cfg.pretrained_checkpoint:
        from latentvla.vla.checkpoint import resolve_policy_dir

        cfg.pretrained_checkpoint = str(resolve_policy_dir(cfg.pretrained_checkpoint))
    return hub


def build_policy(spec: PolicySpec):
    if spec.decode_tokens and (spec.server or spec.kind != "vla"):
        raise LatentVLAError("--decode_tokens applies to a local --policy vla checkpoint (for a policy server, start "
                             "`latentvla serve` with --decode_tokens True)")
    if spec.server:
        from latentvla.serve.client import PolicyClient

        host, port = parse_host_port(spec.server)
        return PolicyClient(host, port, token=spec.token)
    if spec.kind in BASELINES:
        return BASELINES[spec.kind](get_platform(spec.platform), seed=spec.seed)
    if spec.kind != "vla":
        raise LatentVLAError(f"--policy: expected vla, {', '.join(BASELINES)}, got {spec.kind!r}")
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


def reset_policy(policy, seed: int) -> None:
    """Reset per-episode policy state; baseline policies also take the episode seed."""
    if isinstance(policy, _BaselinePolicy):
        policy.reset(seed)
    elif callable(getattr(policy, "reset", None)):
        policy.reset()


def close_policy(policy) -> None:
    """Close a policy that holds a resource (a policy-server client says goodbye instead of dropping the socket)."""
    close = getattr(policy, "close", None)
    if callable(close):
        close()
