"""`latentvla eval metaworld`: the Meta-World adapter of `latentvla.eval.engine` on held-out seeds.

`evaluate_metaworld(policy, tasks, n)` runs n episodes of each task, episode i of task t from the fixed
initial state of seed `eval_seed(seed, t, i)`; `latentvla demo` calls it for all its policies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentvla.eval.engine import EvalRun, evaluate_episodes, register_simulator
from latentvla.eval.policies import PolicySpec, resolve_policy_flags
from latentvla.eval.results import format_table
from latentvla.eval.rollout import EpisodeSpec

# Demo episodes use seeds base + i, evaluation base + EVAL_SEED_OFFSET + i: disjoint by construction.
SEEDS_PER_RUN = 1_000_000
EVAL_SEED_OFFSET = 500_000
RESUME_KEYS = ("suite", "policy", "checkpoint", "seed", "max_steps", "image_size", "num_open_loop_steps")


def demo_seed(seed: int, task_index: int, i: int) -> int:
    return seed * SEEDS_PER_RUN + task_index * 10_000 + i


def eval_seed(seed: int, task_index: int, i: int) -> int:
    return seed * SEEDS_PER_RUN + EVAL_SEED_OFFSET + task_index * 10_000 + i


@register_simulator("metaworld")
class MetaWorldSimulator:
    def __init__(self, image_size: int = 64, max_episode_steps: int = 120):
        self.image_size, self.max_episode_steps = image_size, max_episode_steps

    def setup(self) -> None:
        """Nothing: each `MetaWorldEnv` imports Meta-World (rendering set up first, a clear error if missing)."""

    def make_env(self, ep: EpisodeSpec):
        from latentvla.eval.metaworld_env import MetaWorldEnv

        return MetaWorldEnv(ep.task, image_size=self.image_size, max_episode_steps=self.max_episode_steps)


def evaluate_metaworld(policy: Any, tasks: Sequence[str], episodes_per_task: int, out_dir: str | Path, *,
                       seed: int = 7, image_size: int = 64, max_episode_steps: int = 120, num_videos: int | None = 0,
                       num_open_loop_steps: int | None = None, label: str = "policy", num_workers: int = 1,
                       overwrite: bool = False, progress: bool = True, checkpoint: str | None = None) -> dict:
    """`policy`: a `PolicySpec` (each worker builds its own) or a built policy (run in this process)."""
    from latentvla.eval.metaworld_env import get_task

    episodes = [EpisodeSpec("metaworld", t, name, get_task(name).instruction, i, eval_seed(seed, t, i))
                for t, name in enumerate(tasks) for i in range(episodes_per_task)]
    spec = policy if isinstance(policy, PolicySpec) else PolicySpec()  # unused: the built policy runs here
    meta = {"suite": "metaworld", "tasks": list(tasks), "policy": label, "checkpoint": checkpoint, "seed": seed,
            "max_steps": max_episode_steps, "image_size": image_size, "num_open_loop_steps": num_open_loop_steps}
    run = EvalRun("metaworld", episodes, str(out_dir), max_episode_steps, spec,
                  options={"image_size": image_size, "max_episode_steps": max_episode_steps}, meta=meta,
                  resume_keys=RESUME_KEYS, num_open_loop_steps=num_open_loop_steps, num_videos=num_videos,
                  num_workers=num_workers if isinstance(policy, PolicySpec) else 1, overwrite=overwrite, label=label,
                  progress=progress, policy=None if isinstance(policy, PolicySpec) else policy)
    return evaluate_episodes(run)


def run_metaworld_eval(cfg) -> int:
    from latentvla.eval.metaworld_env import configure_rendering

    cfg.validate()
    configure_rendering(cfg.mujoco_gl)
    resolve_policy_flags(cfg)
    spec = PolicySpec(kind=cfg.policy, checkpoint=cfg.pretrained_checkpoint, server=cfg.policy_server,
                      token=os.environ.get("LATENTVLA_TOKEN") or None, platform="metaworld", device=cfg.device,
                      unnorm_key=cfg.unnorm_key, seed=cfg.seed, vlm_path=cfg.vlm_path)
    who = Path(cfg.pretrained_checkpoint).name if cfg.policy == "vla" else cfg.policy
    out_dir = cfg.output_dir or str(Path("eval_results") / "metaworld" / f"{who}-seed{cfg.seed}")
    summary = evaluate_metaworld(spec, cfg.tasks, cfg.num_trials_per_task, out_dir, seed=cfg.seed,
                                 image_size=cfg.image_size, max_episode_steps=cfg.max_steps,
                                 num_videos=cfg.num_videos, num_open_loop_steps=cfg.num_open_loop_steps,
                                 label=cfg.policy, num_workers=cfg.num_workers, overwrite=cfg.overwrite,
                                 checkpoint=cfg.pretrained_checkpoint or None)
    print(format_table(summary))
    return 0
