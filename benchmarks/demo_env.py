"""Meta-World speed as the demo uses it: physics steps/s, camera renders, expert demo steps/s.

    python benchmarks/demo_env.py [--tasks reach,drawer-open] [--sizes 64,128,224] [--steps 200]

Prints one table row per (task, image size): physics-only steps/s (scripted expert, no
rendering), ms per render of the primary (`corner`) and wrist (`gripperPOV`) cameras, and
recorded demo steps/s (expert + both cameras, what `latentvla demo`'s data stage does).
"""

from __future__ import annotations

import argparse
import time

from latentvla.eval.metaworld_env import MetaWorldEnv, configure_rendering


def measure(task: str, size: int, steps: int) -> dict:
    with MetaWorldEnv(task, image_size=size, max_episode_steps=500, render=False) as env:
        env.reset(0)
        t0 = time.perf_counter()
        for _ in range(steps):
            env.step(env.expert_action())
        physics = steps / (time.perf_counter() - t0)
    with MetaWorldEnv(task, image_size=size, max_episode_steps=500) as env:
        env.reset(0)
        r = env._renderer
        per_cam = {}
        for cam in env.cameras:
            r.update_scene(env.env.data, camera=cam)
            r.render()  # warm-up
            t0 = time.perf_counter()
            n = max(5, steps // 10)
            for _ in range(n):
                r.update_scene(env.env.data, camera=cam)
                r.render()
            per_cam[cam] = 1000 * (time.perf_counter() - t0) / n
        env.reset(1)
        t0 = time.perf_counter()
        n = max(10, steps // 4)
        for _ in range(n):
            env.step(env.expert_action())  # observation() renders both cameras
        demo = n / (time.perf_counter() - t0)
    return {"task": task, "size": size, "physics_steps_s": physics, **{f"{k}_ms": v for k, v in per_cam.items()},
            "demo_steps_s": demo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="reach,drawer-open")
    ap.add_argument("--sizes", default="64,128,224")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    backend = configure_rendering()
    rows = [measure(t, int(s), args.steps) for t in args.tasks.split(",") for s in args.sizes.split(",")]
    print(f"MUJOCO_GL={backend}")
    print("task | size | physics steps/s | corner ms/render | gripperPOV ms/render | demo steps/s (expert + 2 cams)")
    print("--- | --- | --- | --- | --- | ---")
    for r in rows:
        print(f"{r['task']} | {r['size']} | {r['physics_steps_s']:.0f} | {r['corner_ms']:.1f} | "
              f"{r['gripperPOV_ms']:.1f} | {r['demo_steps_s']:.1f}")


if __name__ == "__main__":
    main()
