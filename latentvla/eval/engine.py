"""Simulator-independent evaluation: registered simulator adapters, episode workers, resume, summary.

A simulator is one adapter class registered with `@register_simulator(name)` (and listed in `BUILTIN`
so spawned workers find it): built from `EvalRun.options`, it has `setup()` (once per process:
rendering, imports) and `make_env(episode) -> ClosedLoopEnv` (`latentvla.eval.rollout`), called once
per task and reused across its trials. `evaluate_episodes(run)` skips the episodes already in
`<out_dir>/episodes.jsonl` (resume, refused when a `resume_keys` setting changed), runs the rest in
`num_workers` processes, appends each result, records videos of the first `num_videos` trials of each
task and writes `summary.json`. An env's `render_images`, when it has one, is off for policies with
`needs_images = False` (random, zero, expert) except in recorded episodes.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError
from latentvla.eval.policies import PolicySpec, build_policy, close_policy
from latentvla.eval.results import EpisodeLog, check_run_meta, episode_key, summarize
from latentvla.eval.rollout import EpisodeSpec, run_episode
from latentvla.eval.workers import run_in_workers, split_contiguous
from latentvla.utils.atomic import atomic_write_json

SIMULATORS: dict[str, type] = {}
BUILTIN = {"libero": "latentvla.eval.libero_eval", "metaworld": "latentvla.eval.metaworld_eval"}


def register_simulator(name: str):
    def register(cls: type) -> type:
        SIMULATORS[name] = cls
        return cls

    return register


def get_simulator(name: str) -> type:
    if name not in SIMULATORS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in SIMULATORS:
        raise LatentVLAError(f"unknown simulator {name!r}; registered: {', '.join(sorted({*SIMULATORS, *BUILTIN}))}")
    return SIMULATORS[name]


@dataclass
class EvalRun:
    """One evaluation: which simulator, which episodes, which policy, where the results go."""

    simulator: str
    episodes: list[EpisodeSpec]
    out_dir: str
    max_steps: int
    policy_spec: PolicySpec
    options: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # recorded in run.json and the summary
    resume_keys: tuple[str, ...] = ()
    num_settle_steps: int = 0
    num_open_loop_steps: int | None = None
    num_workers: int = 1
    num_videos: int | None = 0  # videos of trials < num_videos of each task; None: every episode
    overwrite: bool = False
    label: str = "eval"
    progress: bool = True
    worker: int = 0
    policy: Any = field(default=None, repr=False)  # an already-built policy (in-process runs only)


def episode_worker(run: EvalRun, emit) -> None:
    """Run a slice of episodes (module-level so spawned workers can import it)."""
    from latentvla.eval.video import write_mp4

    sim = get_simulator(run.simulator)(**run.options)
    sim.setup()
    policy = run.policy if run.policy is not None else build_policy(run.policy_spec)
    env, env_key = None, None
    try:
        for ep in run.episodes:
            if env_key != (ep.suite, ep.task_id):
                if env is not None:
                    env.close()
                env, env_key = sim.make_env(ep), (ep.suite, ep.task_id)
                if callable(getattr(policy, "bind_env", None)):  # the scripted expert reads the simulator
                    policy.bind_env(env)
            video = run.num_videos is None or ep.trial < run.num_videos
            if hasattr(env, "render_images"):
                env.render_images = video or getattr(policy, "needs_images", True)
            result, frames = run_episode(env, policy, ep, max_steps=run.max_steps,
                                         num_settle_steps=run.num_settle_steps,
                                         num_open_loop_steps=run.num_open_loop_steps, record_video=video)
            result.worker = run.worker
            if video:
                outcome = "success" if result.success else "failure"
                name = f"{ep.suite}-task{ep.task_id:02d}-trial{ep.trial:03d}-{outcome}.mp4"
                path = Path(run.out_dir) / "videos" / name
                write_mp4(path, frames, fps=30)
                result.video = str(path.relative_to(run.out_dir))
            emit(result.to_record())
    finally:
        if env is not None:
            env.close()
        if run.policy is None:  # a policy-server client this worker opened
            close_policy(policy)


def evaluate_episodes(run: EvalRun, log: logging.Logger | None = None) -> dict:
    """Run (or resume) `run`; returns the summary, also written to `<out_dir>/summary.json`."""
    from tqdm import tqdm

    get_simulator(run.simulator)  # an unknown name fails before anything runs
    out_dir = Path(run.out_dir)
    if run.overwrite:
        for name in ("episodes.jsonl", "run.json", "summary.json"):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_run_meta(out_dir, run.meta, run.resume_keys)
    episode_log = EpisodeLog(out_dir / "episodes.jsonl")
    done = {episode_key(r) for r in episode_log.load()}
    pending = [ep for ep in run.episodes if (ep.suite, ep.task_id, ep.trial) not in done]
    if log is not None and len(pending) < len(run.episodes):
        log.info(f"[eval] resuming: {len(run.episodes) - len(pending)} of {len(run.episodes)} episodes already done")
    bar = tqdm(total=len(run.episodes), initial=len(run.episodes) - len(pending), desc=f"eval {run.label}",
               unit="ep", file=sys.stderr, dynamic_ncols=True, disable=not run.progress)

    def on_result(rec: dict) -> None:
        episode_log.append(rec)
        bar.update(1)
        if log is not None:
            log.info(f"task {rec['task_id']} trial {rec['trial']}: {'success' if rec['success'] else 'failure'} "
                     f"in {rec['steps']} steps, {rec['seconds']:.1f} s")

    slices = split_contiguous(pending, run.num_workers)
    payloads = [dataclasses.replace(run, episodes=s, worker=i, policy=run.policy if len(slices) == 1 else None)
                for i, s in enumerate(slices)]
    try:
        run_in_workers(episode_worker, payloads, on_result)
    finally:
        bar.close()
    wanted = {(ep.suite, ep.task_id, ep.trial) for ep in run.episodes}
    records = [r for r in episode_log.load() if episode_key(r) in wanted]
    summary = summarize(records, meta=run.meta, expected_episodes=len(run.episodes))
    summary["output_dir"] = str(out_dir)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
