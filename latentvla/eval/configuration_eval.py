"""Options of `latentvla eval libero` (light module: no torch / simulator imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from latentvla.config import arg
from latentvla.errors import LatentVLAError

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


@dataclass
class LiberoEvalConfig:
    """Closed-loop LIBERO evaluation of a policy (the community's protocol; see docs/evaluation.md)."""

    pretrained_checkpoint: str = arg("", "Policy checkpoint directory: a training checkpoint step_<N>/, "
                                     "or a run dir (its newest checkpoint).")
    task_suite_name: Literal["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"] = arg(
        "libero_goal", "LIBERO task suite.")
    policy: Literal["vla", "random", "zero"] = arg(
        "vla", "vla = the checkpoint; random / zero exercise the environment side without a model.")
    policy_server: str | None = arg(None, "HOST:PORT of a `latentvla serve` policy server to use instead of a local policy.")
    token: str | None = arg(None, "Shared token for --policy_server (default: $LATENTVLA_TOKEN).")
    num_trials_per_task: int = arg(50, "Episodes per task; episode i starts from the suite's fixed initial state i.")
    max_tasks: int | None = arg(None, "Evaluate only the first N tasks of the suite.")
    task_ids: list[int] = arg([], "Evaluate only these task ids (JSON list or comma-separated).")
    max_steps: int | None = arg(None, "Max policy steps per episode (default: the suite's limit 220/280/300/520/400).")
    num_steps_wait: int = arg(10, "No-op steps (gripper open) before the policy acts, so objects settle; not counted.")
    num_open_loop_steps: int | None = arg(None, "Actions of each predicted chunk executed before re-planning (default: chunk length).")
    center_crop: bool | None = arg(None, "Center-crop (area 0.9) observations as the deterministic twin of training's "
                                   "random crop; default: on when the checkpoint was trained with image_aug. "
                                   "With --policy_server the server prepares images itself.")
    env_image_size: int = arg(256, "Camera resolution rendered by the simulator (the protocol uses 256).")
    seed: int = arg(7, "Seed; every episode gets a seed derived from it, the suite, the task and the trial.")
    output_dir: str = arg("", "Results directory (default: eval_results/libero/<suite>-<checkpoint or policy>-seed<seed>).")
    overwrite: bool = arg(False, "Start over in an existing --output_dir instead of resuming it.")
    save_videos: bool = arg(False, "Write one MP4 per episode under <output_dir>/videos/.")
    num_workers: int = arg(1, "Episodes run in this many processes (rendering is the CPU bottleneck).")
    device: str | None = arg(None, "Torch device of a local VLA policy (default: cuda if available, else cpu).")
    unnorm_key: str | None = arg(None, "Dataset whose statistics un-normalize actions (default: the checkpoint's only one).")
    vlm_path: str | None = arg(None, "Backbone (Qwen3-VL) directory, when it is no longer where the checkpoint's config.json says.")
    render_backend: Literal["auto", "egl", "osmesa"] = arg(
        "auto", "Headless rendering (sets MUJOCO_GL and PYOPENGL_PLATFORM); auto keeps MUJOCO_GL or picks EGL, else OSMesa.")
    log_dir: str = arg("logs/libero", "Directory of the run's log file.")
    policy_scope: Literal["auto", "one_per_suite", "one_for_all_suites", "unknown"] = arg(
        "auto", "Recorded in the summary: did one policy serve all suites? auto = from the checkpoint's data_mix.")
    # Flags of the paper's run_libero_eval.py, checked against the checkpoint when given.
    vla_id: str | None = arg(None, "If given, must match the checkpoint's vla_id.")
    use_proprio: bool | None = arg(None, "If given, must match the checkpoint's use_proprio.")
    num_images_in_input: int | None = arg(None, "If given, must match the checkpoint's number of input images.")
    use_pro_version: bool | None = arg(None, "If given, must match the checkpoint's use_pro_version.")

    def validate(self) -> None:
        positive = {"num_trials_per_task": self.num_trials_per_task, "num_workers": self.num_workers,
                    "env_image_size": self.env_image_size}
        for name in ("max_tasks", "max_steps", "num_open_loop_steps", "num_images_in_input"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, v in positive.items():
            if v < 1:
                raise LatentVLAError(f"--{name} must be >= 1, got {v}")
        if self.num_steps_wait < 0:
            raise LatentVLAError(f"--num_steps_wait must be >= 0, got {self.num_steps_wait}")
        if any(t < 0 for t in self.task_ids):
            raise LatentVLAError(f"--task_ids must be non-negative, got {self.task_ids}")
        if self.policy == "vla" and not self.pretrained_checkpoint and not self.policy_server:
            raise LatentVLAError("--pretrained_checkpoint DIR is required with --policy vla "
                                 "(or --policy_server HOST:PORT, or --policy random|zero)")
