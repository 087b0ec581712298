"""LIBERO evaluation throughput on CPU: env steps/s and episodes/hour for 1 and 2 workers.

Runs the real evaluator (`latentvla eval libero`) with the zero policy (no model cost; it never
succeeds, so every episode runs to --max_steps), then reads the per-episode timings from
episodes.jsonl. Throughput counts settle + policy steps and includes the per-episode reset; it
excludes process start and env creation (paid once per task per worker). Episodes/hour at the
suite limit extrapolates the measured per-episode time linearly in steps (reset included, so it
is a slight underestimate).

    python benchmarks/eval_throughput.py [--episodes 4] [--max_steps 40] [--workers 1,2] [--env_image_size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def run(workers: int, episodes: int, max_steps: int, image_size: int, settle: int, root: Path) -> dict:
    from latentvla.eval.configuration_eval import LiberoEvalConfig
    from latentvla.eval.libero_eval import run_libero_eval

    out = root / f"w{workers}"
    cfg = LiberoEvalConfig(policy="zero", task_suite_name="libero_goal", task_ids=[0],
                           num_trials_per_task=episodes, max_steps=max_steps, num_steps_wait=settle,
                           env_image_size=image_size, num_workers=workers, output_dir=str(out),
                           log_dir=str(root / "logs"), overwrite=True)
    start = time.perf_counter()
    run_libero_eval(cfg)
    wall = time.perf_counter() - start
    recs = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    per_worker = defaultdict(float)
    for r in recs:
        per_worker[r["worker"]] += r["seconds"]
    busy = max(per_worker.values())
    steps = sum(r["steps"] + settle for r in recs)
    ep_seconds = sum(r["seconds"] for r in recs) / len(recs)
    full = 300 + settle  # libero_goal's limit + settle steps
    return {"workers": workers, "episodes": len(recs), "steps_per_episode": max_steps + settle,
            "env_steps_per_s": steps / busy, "episodes_per_hour": 3600 * len(recs) / busy,
            "episodes_per_hour_at_limit": 3600 * workers / (ep_seconds * full / (max_steps + settle)),
            "wall_s": wall, "render": json.loads((out / "summary.json").read_text())["run"]["render_backend"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=4, help="episodes per worker count")
    ap.add_argument("--max_steps", type=int, default=40)
    ap.add_argument("--settle", type=int, default=10)
    ap.add_argument("--env_image_size", type=int, default=256)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    os.environ.setdefault("LP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in [int(x) for x in args.workers.split(",")]:
            rows.append(run(w, args.episodes, args.max_steps, args.env_image_size, args.settle, Path(tmp)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nLIBERO libero_goal task 0, zero policy, {args.env_image_size}px x 2 cameras, "
          f"{os.cpu_count()} CPU cores, load average {load:.1f} at the end")
    print(f"{'workers':>7} {'episodes':>8} {'steps/ep':>8} {'env steps/s':>11} {'episodes/h':>10} "
          f"{'episodes/h @310 steps':>21} {'wall s':>7} {'render':>6}")
    for r in rows:
        print(f"{r['workers']:>7} {r['episodes']:>8} {r['steps_per_episode']:>8} {r['env_steps_per_s']:>11.2f} "
              f"{r['episodes_per_hour']:>10.0f} {r['episodes_per_hour_at_limit']:>21.1f} {r['wall_s']:>7.1f} "
              f"{r['render']:>6}")


if __name__ == "__main__":
    main()
