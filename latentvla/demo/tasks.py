"""The Meta-World tasks the demo knows, each with one instruction sentence written by us.

Light module (no mujoco import). Short names are what `--tasks` takes; `env_name` is
Meta-World's V3 name (its scripted expert is `metaworld.policies.ENV_POLICY_MAP[env_name]`).
"""

from __future__ import annotations

from dataclasses import dataclass


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
    from latentvla.errors import LatentVLAError

    try:
        return TASKS[name]
    except KeyError:
        raise LatentVLAError(f"unknown Meta-World demo task {name!r}; known: {', '.join(TASKS)}") from None
