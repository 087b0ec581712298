"""Scripted-expert demonstrations in Meta-World, written as an RLDS dataset through our writer.

Per step: `observation/image` (primary camera), `observation/wrist_image`, `observation/state`
(hand xyz + gripper opening, float32 [4]), `action` (xyz deltas + gripper effort, float32 [4],
the expert's *clean* action for that state), `language_instruction`, `is_first/is_last/
is_terminal`, `reward`, `discount`; episode metadata `file_path` = "metaworld/<env>/seed_<k>".

The executed action carries Gaussian noise on xyz (`action_noise`) while the recorded label stays
the expert's: the data then covers states slightly off the expert's path together with the action
that returns to it, which is what a behaviour-cloned policy meets in closed loop. Only successful
episodes are kept (an unsuccessful seed is replaced by the next one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from latentvla.errors import LatentVLAError
from latentvla.eval.metaworld_env import get_task
from latentvla.eval.metaworld_eval import demo_seed

DATASET_NAME = "metaworld_demo"
DATASET_VERSION = "1.0.0"
IMAGE_ENCODING = "png"  # lossless: evaluation feeds raw renders, so training sees exactly the same pixels
MAX_ATTEMPTS_FACTOR = 3


def _data_api():
    try:
        from latentvla.data import features, tfds
    except ImportError as e:
        raise LatentVLAError(f"demo stage 'data' needs the RLDS writer latentvla.data.tfds ({e}); it is not available "
                             "in this checkout") from None
    return features, tfds


def dataset_features(image_size: int) -> dict:
    """The flat feature schema of the demo dataset (LIBERO's key layout, Meta-World's sizes)."""
    F, _ = _data_api()
    shape = (image_size, image_size, 3)
    return {
        "steps/observation/image": F.image_feature(shape, encoding=IMAGE_ENCODING,
                                                   description="Primary camera (corner), RGB."),
        "steps/observation/wrist_image": F.image_feature(shape, encoding=IMAGE_ENCODING,
                                                         description="Wrist camera (gripperPOV), RGB."),
        "steps/observation/state": F.tensor_feature((4,), "float32", "Hand xyz (3) + gripper opening (1)."),
        "steps/action": F.tensor_feature((4,), "float32",
                                         "xyz deltas (3) + gripper effort (1; -1 open, +1 close), in [-1, 1]."),
        "steps/language_instruction": F.text_feature("Instruction written for the task."),
        "steps/is_first": F.scalar_feature("bool"),
        "steps/is_last": F.scalar_feature("bool"),
        "steps/is_terminal": F.scalar_feature("bool"),
        "steps/reward": F.scalar_feature("float32", "1 on the step that reaches success, else 0."),
        "steps/discount": F.scalar_feature("float32"),
        "episode_metadata/file_path": F.text_feature("metaworld/<env>/seed_<k>"),
    }


def record_episode(env, seed: int, rng: np.random.Generator, action_noise: float) -> dict | None:
    """One expert episode from initial state `seed`; None when the expert did not succeed."""
    obs = env.reset(seed)
    images, wrist, states, actions = [], [], [], []
    success = False
    while True:
        label = env.expert_action()
        images.append(obs["images"][0])
        wrist.append(obs["images"][1])
        states.append(obs["proprio"])
        actions.append(label)
        executed = label.copy()
        if action_noise > 0:
            executed[:3] += rng.normal(0.0, action_noise, size=3).astype(np.float32)
        obs, success, finished = env.step(np.clip(executed, -1.0, 1.0))
        if finished:
            break
    if not success:
        return None
    T = len(actions)
    flags = np.zeros(T, dtype=bool)
    first, last = flags.copy(), flags.copy()
    first[0], last[-1] = True, True
    reward = np.zeros(T, dtype=np.float32)
    reward[-1] = 1.0
    return {
        "observation/image": np.stack(images),
        "observation/wrist_image": np.stack(wrist),
        "observation/state": np.stack(states).astype(np.float32),
        "action": np.stack(actions).astype(np.float32),
        "language_instruction": [env.instruction] * T,
        "is_first": first,
        "is_last": last,
        "is_terminal": last.copy(),
        "reward": reward,
        "discount": np.ones(T, dtype=np.float32),
        "episode_metadata/file_path": f"metaworld/{env.task.env_name}/seed_{seed}",
    }


def iter_task_demos(task: str, task_index: int, num_demos: int, *, seed: int, image_size: int, max_episode_steps: int,
                    action_noise: float, stats: dict | None = None) -> Iterator[dict]:
    """Yield `num_demos` successful expert episodes of one task (seeded, reproducible)."""
    from latentvla.eval.metaworld_env import MetaWorldEnv

    rng = np.random.default_rng([seed, task_index, 17])
    kept = attempts = 0
    with MetaWorldEnv(get_task(task), image_size=image_size, max_episode_steps=max_episode_steps) as env:
        while kept < num_demos:
            if attempts >= MAX_ATTEMPTS_FACTOR * num_demos:
                raise LatentVLAError(f"demo data: the scripted expert of {task!r} succeeded in only "
                                     f"{kept} of {attempts} episodes within --max_episode_steps {max_episode_steps}; "
                                     "raise it or pick other --tasks")
            ep = record_episode(env, demo_seed(seed, task_index, attempts), rng, action_noise)
            attempts += 1
            if ep is None:
                continue
            kept += 1
            if stats is not None:
                stats.setdefault(task, {"kept": 0, "attempts": 0, "steps": 0})
                stats[task]["kept"] += 1
                stats[task]["steps"] += len(ep["action"])
            yield ep
    if stats is not None:
        stats[task]["attempts"] = attempts


def write_expert_dataset(data_root: str | Path, tasks: Sequence[str], demos_per_task: int, *, seed: int,
                         image_size: int, max_episode_steps: int, action_noise: float = 0.1, progress: bool = True,
                         overwrite: bool = False) -> tuple[Path, dict]:
    """Collect and write `<data_root>/metaworld_demo/1.0.0`; returns (path, per-task stats)."""
    from tqdm import tqdm

    _, T = _data_api()
    out = Path(data_root) / DATASET_NAME / DATASET_VERSION
    stats: dict = {}
    bar = tqdm(total=len(tasks) * demos_per_task, desc="expert demos", unit="ep", disable=not progress)
    with T.TFDSWriter(out, dataset_features(image_size), splits=("train",), overwrite=overwrite,
                      description="Meta-World scripted-expert demonstrations written by `latentvla demo`.") as w:
        for ti, task in enumerate(tasks):
            for ep in iter_task_demos(task, ti, demos_per_task, seed=seed, image_size=image_size,
                                      max_episode_steps=max_episode_steps, action_noise=action_noise, stats=stats):
                w.add_episode(ep, "train")
                bar.update(1)
    bar.close()
    return out, stats
