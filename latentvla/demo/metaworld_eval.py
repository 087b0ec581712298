"""Closed-loop evaluation in Meta-World on held-out seeds (fixed initial states).

The rollout loop is the eval package's simulator-independent one
(`latentvla.eval.rollout.run_episode`: re-plan when the action queue is empty, execute
`num_open_loop_steps` of each chunk); `MetaWorldClosedLoopEnv` adapts `MetaWorldEnv` to it.
A policy is anything with `predict_action(images, instruction, proprio) -> [P, 4]`:
a trained `VLAPolicy` (or the policy-server client), `RandomActionPolicy` (the floor) or
`ExpertPolicy` (Meta-World's scripted expert, the ceiling; reads the simulator state).

`evaluate(...)` runs every (task, episode) once, appends one JSON line per finished episode to
`episodes.jsonl` (an interrupted run resumes: finished episodes are skipped), saves MP4s of the
first episodes, and writes `summary.json` (success per task and overall, with Wilson 95% intervals).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.demo.tasks import get_task
from latentvla.utils.atomic import atomic_write_json, atomic_write_text

# Demo episodes use seeds base + i, evaluation base + EVAL_SEED_OFFSET + i: disjoint by construction.
SEEDS_PER_RUN = 1_000_000
EVAL_SEED_OFFSET = 500_000


def demo_seed(seed: int, task_index: int, i: int) -> int:
    return seed * SEEDS_PER_RUN + task_index * 10_000 + i


def eval_seed(seed: int, task_index: int, i: int) -> int:
    return seed * SEEDS_PER_RUN + EVAL_SEED_OFFSET + task_index * 10_000 + i


class MetaWorldClosedLoopEnv:
    """`latentvla.eval.rollout.ClosedLoopEnv` for a `MetaWorldEnv` (dataset convention = env convention)."""

    action_dim = 4

    def __init__(self, env):
        self.env = env

    def reset(self, episode) -> dict:
        return self.env.reset(episode.seed)

    def step(self, action: np.ndarray) -> tuple[dict, bool]:
        obs, success, _ = self.env.step(action)
        return obs, success

    def settle_action(self) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, -1.0], dtype=np.float32)  # unused: Meta-World needs no settling

    def policy_inputs(self, obs: dict) -> tuple[list[np.ndarray], np.ndarray]:
        return list(obs.get("images", ())), obs["proprio"]

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)

    def video_frame(self, obs: dict) -> np.ndarray:
        return np.concatenate(list(obs["images"]), axis=1)  # primary | wrist


class RandomActionPolicy:
    """Uniform random actions in [-1, 1]^4, one per call (re-seeded per episode)."""

    chunk_len = 1

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        # the rollout loop seeds numpy's global generator with the episode seed just before this call,
        # so every episode draws the same actions whatever the order (resume, workers)
        self._rng = np.random.default_rng([self.seed, int(np.random.randint(1 << 31))])

    def predict_action(self, images, instruction, proprio=None) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, size=(1, 4)).astype(np.float32)


class ExpertPolicy:
    """Meta-World's scripted expert for the env's current state, one action per call."""

    chunk_len = 1

    def __init__(self, env):
        self.env = env

    def predict_action(self, images, instruction, proprio=None) -> np.ndarray:
        return self.env.expert_action()[None]


def _read_done(path: Path) -> dict[tuple[str, int], dict]:
    done: dict[tuple[str, int], dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[(rec["task"], int(rec["episode"]))] = rec
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a torn last line from an interrupted run: that episode is redone
    return done


def evaluate(make_policy: Callable[[Any], Any], tasks: Sequence[str], episodes_per_task: int, out_dir: str | Path,
             *, seed: int = 7, image_size: int = 64, max_episode_steps: int = 120, num_videos: int = 0,
             num_open_loop_steps: int | None = None, label: str = "policy", needs_images: bool = True,
             progress: bool = True) -> dict:
    """Run `episodes_per_task` held-out episodes of each task; returns (and writes) the summary.

    `make_policy(env)` builds the policy for one task's `MetaWorldEnv` (the expert needs it);
    `needs_images=False` (random, expert) skips rendering except for the videos.
    """
    from tqdm import tqdm

    from latentvla.demo.metaworld_env import MetaWorldEnv
    from latentvla.eval.rollout import EpisodeSpec, run_episode
    from latentvla.eval.video import write_mp4

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "episodes.jsonl"
    done = _read_done(log_path)
    if log_path.is_file() and not log_path.read_bytes().endswith(b"\n") and log_path.stat().st_size:
        # an interrupted run left a torn last line: keep only the complete records before appending
        atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in done.values()))
    total = len(tasks) * episodes_per_task
    bar = tqdm(total=total, desc=f"eval {label}", unit="ep", disable=not progress,
               initial=sum(1 for (t, e) in done if t in tasks and e < episodes_per_task))
    with open(log_path, "a") as log:
        for ti, name in enumerate(tasks):
            todo = [i for i in range(episodes_per_task) if (name, i) not in done]
            if not todo:
                continue
            task = get_task(name)
            env = MetaWorldEnv(task, image_size=image_size, max_episode_steps=max_episode_steps,
                               render=needs_images or num_videos > 0)
            try:
                adapter, policy = MetaWorldClosedLoopEnv(env), make_policy(env)
                for i in todo:
                    env.render_images = needs_images or i < num_videos
                    spec = EpisodeSpec(suite="metaworld", task_id=ti, task=name, instruction=task.instruction,
                                       trial=i, seed=eval_seed(seed, ti, i))
                    result, frames = run_episode(adapter, policy, spec, max_steps=max_episode_steps, num_settle_steps=0,
                                                 num_open_loop_steps=num_open_loop_steps, record_video=i < num_videos)
                    rec = {"task": name, "episode": i, "seed": spec.seed, "success": result.success,
                           "steps": result.steps, "seconds": round(result.seconds, 3),
                           "policy_calls": result.policy_calls}
                    if frames:
                        rec["video"] = str(write_mp4(out_dir / "videos" / f"{name}_ep{i:03d}.mp4", frames))
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    done[(name, i)] = rec
                    bar.update(1)
                    bar.set_postfix(success=f"{np.mean([r['success'] for r in done.values()]):.2f}")
            finally:
                env.close()
    bar.close()
    summary = summarize(done, tasks, episodes_per_task, label)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def summarize(done: dict[tuple[str, int], dict], tasks: Sequence[str], episodes_per_task: int, label: str) -> dict:
    """Success per task and overall, each with its Wilson 95% interval (`ci95`, `latentvla.eval.stats`)."""
    from latentvla.eval.stats import ci_list

    per_task = {}
    for name in tasks:
        recs = [done[(name, i)] for i in range(episodes_per_task) if (name, i) in done]
        k = sum(bool(r["success"]) for r in recs)
        per_task[name] = {
            "success_rate": float(np.mean([r["success"] for r in recs])) if recs else None,
            "episodes": len(recs),
            "successes": k,
            "ci95": ci_list(k, len(recs)),
            "mean_steps": float(np.mean([r["steps"] for r in recs])) if recs else None,
        }
    rates = [v["success_rate"] for v in per_task.values() if v["success_rate"] is not None]
    all_recs = [r for (t, i), r in done.items() if t in tasks and i < episodes_per_task]
    k_all = sum(bool(r["success"]) for r in all_recs)
    return {
        "label": label,
        "success_rate": float(np.mean([r["success"] for r in all_recs])) if all_recs else None,
        "successes": k_all,
        "ci95": ci_list(k_all, len(all_recs)),
        "mean_task_success_rate": float(np.mean(rates)) if rates else None,
        "episodes": len(all_recs),
        "seconds": float(sum(r["seconds"] for r in all_recs)),
        "per_task": per_task,
    }
