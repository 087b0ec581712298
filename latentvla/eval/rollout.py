"""Closed-loop rollouts, simulator independent (LIBERO and Meta-World share this loop).

An environment adapter (`ClosedLoopEnv`) turns simulator observations into policy inputs and
policy actions (robot units, dataset conventions) into simulator actions. A policy is anything
with `predict_action(images, instruction, proprio) -> [P, D]` (robot units): `VLAPolicy`, the
server client, or the random / zero policies.

The loop (the community's protocol):
  reset to the episode's fixed initial state -> `num_settle_steps` no-op steps (not counted) ->
  until success or `max_steps`: when the action queue is empty, ask the policy for a chunk and
  queue its first `num_open_loop_steps` actions; execute one queued action per env step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from latentvla.errors import LatentVLAError
from latentvla.eval.policies import reset_policy
from latentvla.utils.seeding import seed_everything


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: which task, which trial (= fixed initial state index), its seed."""

    suite: str
    task_id: int
    task: str
    instruction: str
    trial: int
    seed: int


@dataclass
class EpisodeResult:
    episode: EpisodeSpec
    success: bool
    steps: int
    seconds: float
    policy_calls: int
    video: str | None = None
    worker: int = 0

    def to_record(self) -> dict:
        """The episode's fields, then the outcome's (`latentvla.eval.results`)."""
        d = asdict(self)
        return {**d.pop("episode"), **d, "seconds": round(self.seconds, 3)}


class ClosedLoopEnv(Protocol):
    """What `run_episode` needs from a simulator adapter."""

    action_dim: int

    def reset(self, episode: EpisodeSpec) -> Any: ...          # -> raw observation
    def step(self, action: np.ndarray) -> tuple[Any, bool]: ...  # -> (observation, success[, more])
    def settle_action(self) -> np.ndarray: ...                   # env-convention no-op
    def policy_inputs(self, obs: Any) -> tuple[list[np.ndarray], np.ndarray | None]: ...
    def to_env_action(self, action: np.ndarray) -> np.ndarray: ...
    def video_frame(self, obs: Any) -> np.ndarray: ...


class Policy(Protocol):
    def predict_action(self, images: Sequence[np.ndarray], instruction: str,
                       proprio: np.ndarray | None = None) -> np.ndarray: ...


def check_action_chunk(chunk: Any, action_dim: int, source: str = "policy") -> np.ndarray:
    """The policy's output as float64 [P, D]; wrong shapes or non-finite values are errors."""
    arr = np.asarray(chunk, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == action_dim:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != action_dim or arr.shape[0] < 1:
        raise LatentVLAError(f"{source} returned actions of shape {tuple(arr.shape)}; expected "
                             f"[chunk_len, {action_dim}]")
    if not np.all(np.isfinite(arr)):
        raise LatentVLAError(f"{source} returned non-finite actions (NaN/inf)")
    return arr


def run_episode(env: ClosedLoopEnv, policy: Policy, episode: EpisodeSpec, *, max_steps: int,
                num_settle_steps: int = 10, num_open_loop_steps: int | None = None,
                record_video: bool = False) -> tuple[EpisodeResult, list[np.ndarray]]:
    """Run one episode; returns its result and (when `record_video`) the frames seen by the policy."""
    if max_steps < 1:
        raise LatentVLAError(f"max_steps must be >= 1, got {max_steps}")
    start = time.perf_counter()
    seed_everything(episode.seed)  # the same episode gives the same outcome in any worker / on resume
    obs = env.reset(episode)
    reset_policy(policy, episode.seed)
    success = False
    for _ in range(num_settle_steps):  # let objects settle; not counted, success not checked
        obs = env.step(env.settle_action())[0]
    frames: list[np.ndarray] = []
    queue: deque[np.ndarray] = deque()
    steps = calls = 0
    while steps < max_steps and not success:
        if record_video:
            frames.append(env.video_frame(obs))
        if not queue:
            images, proprio = env.policy_inputs(obs)
            chunk = check_action_chunk(policy.predict_action(images, episode.instruction, proprio), env.action_dim)
            calls += 1
            n = chunk.shape[0] if num_open_loop_steps is None else min(num_open_loop_steps, chunk.shape[0])
            queue.extend(chunk[:n])
        obs, success = env.step(env.to_env_action(queue.popleft()))[:2]
        steps += 1
    if record_video:
        frames.append(env.video_frame(obs))
    return EpisodeResult(episode, bool(success), steps, time.perf_counter() - start, calls), frames
