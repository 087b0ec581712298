"""Closed-loop evaluation in Meta-World on held-out seeds (fixed initial states).

A *controller* has `reset()` and `act(obs) -> action [4]`; three are provided:
`RandomController` (uniform actions, the floor), `ExpertController` (the scripted expert, the
ceiling) and `ChunkPolicyController` (a trained VLA policy: predicts a chunk with
`predict_action(images, instruction, proprio)` and executes `num_open_loop_steps` of it before
re-planning, as in the LIBERO protocol).

`evaluate(...)` runs every (task, episode) once, appends one JSON line per finished episode to
`episodes.jsonl` (an interrupted run resumes: finished episodes are skipped), saves MP4s of the
first episodes, and writes `summary.json` (success per task and overall).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from latentvla.demo.tasks import get_task
from latentvla.errors import LatentVLAError
from latentvla.utils.atomic import atomic_write_json

# Demo episodes use seeds base + i, evaluation base + EVAL_SEED_OFFSET + i: disjoint by construction.
SEEDS_PER_RUN = 1_000_000
EVAL_SEED_OFFSET = 500_000


def demo_seed(seed: int, task_index: int, i: int) -> int:
    return seed * SEEDS_PER_RUN + task_index * 10_000 + i


def eval_seed(seed: int, task_index: int, i: int) -> int:
    return seed * SEEDS_PER_RUN + EVAL_SEED_OFFSET + task_index * 10_000 + i


class RandomController:
    """Uniform random actions in [-1, 1]^4 (seeded)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, episode_seed: int = 0) -> None:
        self.rng = np.random.default_rng([self.seed, episode_seed])

    def act(self, obs: dict) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=4).astype(np.float32)


class ExpertController:
    """Meta-World's scripted expert (reads the simulator state, not the images)."""

    def __init__(self, env):
        self.env = env

    def reset(self, episode_seed: int = 0) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        return self.env.expert_action()


class ChunkPolicyController:
    """A chunk-predicting policy (`VLAPolicy` or its server client), re-planning every n steps."""

    def __init__(self, policy, num_open_loop_steps: int | None = None):
        self.policy = policy
        chunk = int(getattr(policy, "chunk_len", 0) or 0)
        self.num_open_loop_steps = int(num_open_loop_steps or chunk or 1)
        self._queue: list[np.ndarray] = []

    def reset(self, episode_seed: int = 0) -> None:
        self._queue = []
        if hasattr(self.policy, "reset"):
            self.policy.reset()

    def act(self, obs: dict) -> np.ndarray:
        if not self._queue:
            chunk = np.asarray(self.policy.predict_action(list(obs["images"]), obs["instruction"], obs["proprio"]))
            if chunk.ndim != 2 or chunk.shape[-1] != 4:
                raise LatentVLAError(f"policy returned an action chunk of shape {list(chunk.shape)}; expected [P, 4] for Meta-World")
            self._queue = [a for a in chunk[: self.num_open_loop_steps]]
        return self._queue.pop(0)


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


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """MP4 of uint8 [H, W, 3] frames, written atomically."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise LatentVLAError("saving videos needs imageio + imageio-ffmpeg: pip install -e '.[metaworld]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # ffmpeg picks the container by suffix
    try:
        w = imageio.get_writer(str(tmp), fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error")
        for f in frames:
            w.append_data(np.ascontiguousarray(f))
        w.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def evaluate(make_controller: Callable[[Any], Any], tasks: Sequence[str], episodes_per_task: int, out_dir: str | Path,
             *, seed: int = 7, image_size: int = 64, max_episode_steps: int = 120, num_videos: int = 0,
             label: str = "policy", needs_images: bool = True, progress: bool = True) -> dict:
    """Run `episodes_per_task` held-out episodes of each task; returns (and writes) the summary.

    `make_controller(env)` builds the controller for one task's environment; `needs_images=False`
    (random, expert) skips rendering except for the videos.
    """
    from tqdm import tqdm

    from latentvla.demo.metaworld_env import MetaWorldEnv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "episodes.jsonl"
    done = _read_done(log_path)
    total = len(tasks) * episodes_per_task
    bar = tqdm(total=total, desc=f"eval {label}", unit="ep", disable=not progress, initial=sum(
        1 for (t, e) in done if t in tasks and e < episodes_per_task))
    with open(log_path, "a") as log:
        for ti, name in enumerate(tasks):
            todo = [i for i in range(episodes_per_task) if (name, i) not in done]
            if not todo:
                continue
            env = MetaWorldEnv(get_task(name), image_size=image_size, max_episode_steps=max_episode_steps,
                               render=needs_images or num_videos > 0)
            try:
                controller = make_controller(env)
                for i in todo:
                    env.render_images = needs_images or i < num_videos
                    rec = run_episode(env, controller, eval_seed(seed, ti, i),
                                      video=out_dir / "videos" / f"{name}_ep{i:03d}.mp4" if i < num_videos else None)
                    rec.update(task=name, episode=i)
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


def run_episode(env, controller, episode_seed: int, video: Path | None = None) -> dict:
    t0 = time.perf_counter()
    obs = env.reset(episode_seed)
    controller.reset(episode_seed)
    frames = [np.concatenate(list(obs["images"]), axis=1)] if video is not None else None
    success, steps = False, 0
    while True:
        obs, success, finished = env.step(controller.act(obs))
        steps += 1
        if frames is not None:
            frames.append(np.concatenate(list(obs["images"]), axis=1))
        if finished:
            break
    if frames is not None:
        write_video(video, frames)
    return {"seed": int(episode_seed), "success": bool(success), "steps": steps,
            "seconds": round(time.perf_counter() - t0, 3), "video": str(video) if video is not None else None}


def summarize(done: dict[tuple[str, int], dict], tasks: Sequence[str], episodes_per_task: int, label: str) -> dict:
    per_task = {}
    for name in tasks:
        recs = [done[(name, i)] for i in range(episodes_per_task) if (name, i) in done]
        per_task[name] = {
            "success_rate": float(np.mean([r["success"] for r in recs])) if recs else None,
            "episodes": len(recs),
            "mean_steps": float(np.mean([r["steps"] for r in recs])) if recs else None,
        }
    rates = [v["success_rate"] for v in per_task.values() if v["success_rate"] is not None]
    all_recs = [r for (t, i), r in done.items() if t in tasks and i < episodes_per_task]
    return {
        "label": label,
        "success_rate": float(np.mean([r["success"] for r in all_recs])) if all_recs else None,
        "mean_task_success_rate": float(np.mean(rates)) if rates else None,
        "episodes": len(all_recs),
        "seconds": float(sum(r["seconds"] for r in all_recs)),
        "per_task": per_task,
    }
