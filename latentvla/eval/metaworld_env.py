"""Meta-World tasks as the demo and `latentvla eval metaworld` see them: two cameras, 4-dim proprio,
fixed initial states; `TASKS`: short name (`--tasks`), V3 env name, an instruction written by us.
- Rendering is headless: `MUJOCO_GL` (and `PYOPENGL_PLATFORM`) are set *before* mujoco is
  imported, otherwise mujoco tries to open an X display.
- Cameras: `corner` is the primary (agent-view) camera, `gripperPOV` the wrist camera. Meta-World's
  cameras render upside down; images are flipped vertically here, once, so data and evaluation see
  the same, upright images. Shadows use a 512² map and no multisampling: 4-5× faster than
  Meta-World's 4096² default on CPU, with the same geometry.
- Proprio = hand xyz (3) + gripper opening (1, Meta-World's normalized finger distance).
- Actions = xyz deltas (3) + gripper effort (1, −1 open / +1 close), all in [−1, 1]; this is
  the dataset's convention too (platform `metaworld`), so no conversion happens anywhere.
- `reset(seed=k)` gives the same initial state for the same k (object and goal positions come
  from a generator seeded with k), so demos and evaluation use disjoint, reproducible seeds.
- `MetaWorldEnv` is the `ClosedLoopEnv` of `latentvla eval metaworld` too (`reset` takes the episode's seed).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentvla.errors import LatentVLAError


@dataclass(frozen=True)
class DemoTask:
    name: str
    env_name: str
    instruction: str


TASKS: dict[str, DemoTask] = {t.name: t for t in (
    DemoTask("reach", "reach-v3", "move the gripper to the red target"),
    DemoTask("push", "push-v3", "push the puck to the goal"),
    DemoTask("pick-place", "pick-place-v3", "pick up the puck and put it at the goal"),
    DemoTask("drawer-open", "drawer-open-v3", "pull the drawer open"),
    DemoTask("drawer-close", "drawer-close-v3", "push the drawer closed"),
    DemoTask("button-press", "button-press-v3", "press the button in front of the gripper"),
    DemoTask("button-press-topdown", "button-press-topdown-v3", "press the button down from above"),
    DemoTask("window-open", "window-open-v3", "slide the window open"),
    DemoTask("door-open", "door-open-v3", "swing the door open"),
)}


def get_task(name: str) -> DemoTask:
    try:
        return TASKS[name]
    except KeyError:
        raise LatentVLAError(f"unknown Meta-World demo task {name!r}; known: {', '.join(TASKS)}") from None


PRIMARY_CAMERA = "corner"
WRIST_CAMERA = "gripperPOV"
MAX_PATH_LENGTH = 500  # Meta-World refuses to step past this without a reset


def configure_rendering(backend: str = "egl") -> str:
    """Pick the headless GL backend (unless the user set one); must run before `import mujoco`."""
    backend = os.environ.setdefault("MUJOCO_GL", backend)
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def import_metaworld():
    """Import (mujoco, metaworld, ENV_POLICY_MAP) with rendering configured, or fail clearly."""
    configure_rendering()
    try:
        import metaworld
        import mujoco
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as e:
        raise LatentVLAError(f"Meta-World is not installed ({e}); install it with: pip install "
                             "-e '.[metaworld]'") from None
    return mujoco, metaworld, ENV_POLICY_MAP


class MetaWorldEnv:
    """A Meta-World V3 task (goal observable to the scripted expert, not to the policy)."""

    action_dim = 4

    def __init__(self, task: str | DemoTask, image_size: int = 64, max_episode_steps: int = 120, render: bool = True):
        self.task = task if isinstance(task, DemoTask) else get_task(task)
        if not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
            raise LatentVLAError(f"max_episode_steps must be in [1, {MAX_PATH_LENGTH}], got {max_episode_steps}")
        mujoco, metaworld, policies = import_metaworld()
        self._mujoco = mujoco
        key = f"{self.task.env_name}-goal-observable"
        if key not in metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
            raise LatentVLAError(f"this Meta-World version has no environment {self.task.env_name!r}")
        self.env = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key](seed=0)
        self.expert = policies[self.task.env_name]()
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.cameras = (PRIMARY_CAMERA, WRIST_CAMERA)
        self._renderer = None
        self.render_images = bool(render)  # observations carry images (switchable per episode)
        if render:
            model = self.env.model
            model.vis.quality.shadowsize = 512
            model.vis.quality.offsamples = 0
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.image_size)
            model.vis.global_.offheight = max(model.vis.global_.offheight, self.image_size)
            self._renderer = mujoco.Renderer(model, self.image_size, self.image_size)
        self._obs: np.ndarray | None = None
        self.steps = 0

    instruction = property(lambda self: self.task.instruction)

    def reset(self, seed: Any) -> dict[str, Any]:
        """Start the episode with fixed initial state `seed` (or an `EpisodeSpec`'s); returns the observation."""
        env = self.env
        env._freeze_rand_vec = False  # draw object/goal positions ...
        env.seeded_rand_vec = True  # ... from env.np_random, which env.seed() re-seeds
        env.seed(int(getattr(seed, "seed", seed)))
        self._obs, _ = env.reset()
        self.steps = 0
        return self.observation()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool, bool]:
        """Apply one action; returns (observation, success, done). Done = success or step limit."""
        if self._obs is None:
            raise RuntimeError("MetaWorldEnv.step() before reset()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (4,) or not np.all(np.isfinite(a)):
            raise LatentVLAError(f"Meta-World action must be 4 finite numbers, got {np.asarray(action).tolist()}")
        self._obs, _, _, _, info = self.env.step(np.clip(a, -1.0, 1.0).astype(np.float32))
        self.steps += 1
        success = bool(info.get("success", 0.0))
        return self.observation(), success, success or self.steps >= self.max_episode_steps

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, clipped to the action space."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips anyway
            a = self.expert.get_action(self._obs)
        return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)

    def proprio(self) -> np.ndarray:
        return np.asarray(self._obs[:4], dtype=np.float32)

    def render(self) -> np.ndarray:
        """uint8 [2, S, S, 3]: primary camera, wrist camera (upright)."""
        if self._renderer is None:
            raise LatentVLAError("this MetaWorldEnv was created with render=False")
        out = np.empty((len(self.cameras), self.image_size, self.image_size, 3), dtype=np.uint8)
        for i, cam in enumerate(self.cameras):
            self._renderer.update_scene(self.env.data, camera=cam)
            out[i] = self._renderer.render()[::-1]  # Meta-World cameras render upside down
        return out

    def observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"proprio": self.proprio(), "instruction": self.instruction}
        if self._renderer is not None and self.render_images:
            obs["images"] = self.render()
        return obs

    def settle_action(self) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, -1.0], dtype=np.float32)  # unused: Meta-World needs no settling

    def policy_inputs(self, obs: dict) -> tuple[list[np.ndarray], np.ndarray]:
        return list(obs.get("images", ())), obs["proprio"]

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        return action  # the dataset's convention; `step` checks and clips

    def video_frame(self, obs: dict) -> np.ndarray:
        return np.concatenate(list(obs["images"]), axis=1)  # primary | wrist

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
