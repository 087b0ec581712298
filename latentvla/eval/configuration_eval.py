"""Options of the `latentvla eval` commands (light module: no torch / simulator imports)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from latentvla.config import arg, check_min
from latentvla.errors import LatentVLAError
from latentvla.eval.suites import AVAILABLE_PERTURBATIONS, BASE_SUITES, PRO_SUITES, check_suite, perturbation_suites

LIBERO_SUITES = BASE_SUITES


@dataclass
class LiberoEvalConfig:
    """Closed-loop LIBERO evaluation of a policy (the community's protocol; see docs/evaluation.md)."""

    pretrained_checkpoint: str = arg("", "Policy checkpoint directory: a training checkpoint step_<N>/, "
                                     "or a run dir (its newest checkpoint), or a Hugging Face repo id holding one.")
    task_suite_name: str = arg(
        "libero_goal", f"LIBERO task suite: {', '.join(BASE_SUITES)}, or a LIBERO-PRO perturbation of one "
        f"({', '.join(PRO_SUITES)}).")
    policy: Literal["vla", "random", "zero"] = arg(
        "vla", "vla = the checkpoint; random / zero exercise the environment side without a model.")
    policy_server: str | None = arg(None, "HOST:PORT of a `latentvla serve` policy server to use instead of "
                                          "a local policy.")
    token: str | None = arg(None, "Shared token for --policy_server (default: $LATENTVLA_TOKEN).")
    num_trials_per_task: int = arg(50, "Episodes per task; episode i starts from the suite's fixed initial state i.")
    max_tasks: int | None = arg(None, "Evaluate only the first N tasks of the suite.")
    task_ids: list[int] = arg([], "Evaluate only these task ids (JSON list or comma-separated).")
    max_steps: int | None = arg(None, "Max policy steps per episode (default: the suite's limit 220/280/300/520/400).")
    num_steps_wait: int = arg(10, "No-op steps (gripper open) before the policy acts, so objects settle; not counted.")
    num_open_loop_steps: int | None = arg(None, "Actions of each predicted chunk executed before re-planning "
                                                "(default: chunk length).")
    center_crop: bool | None = arg(None, "Center-crop (area 0.9) observations as the deterministic twin of training's "
                                   "random crop; default: on when the checkpoint was trained with image_aug. "
                                   "With --policy_server the server prepares images itself.")
    env_image_size: int = arg(256, "Camera resolution rendered by the simulator (the protocol uses 256).")
    seed: int = arg(7, "Seed; every episode gets a seed derived from it, the suite, the task and the trial.")
    output_dir: str = arg("",
                          "Results directory (default: eval_results/libero/<suite>-<checkpoint or policy>-seed<seed>).")
    overwrite: bool = arg(False, "Start over in an existing --output_dir instead of resuming it.")
    save_videos: bool = arg(False, "Write one MP4 per episode under <output_dir>/videos/.")
    num_workers: int = arg(1, "Episodes run in this many processes (rendering is the CPU bottleneck).")
    device: str | None = arg(None, "Torch device of a local VLA policy (default: cuda if available, else cpu).")
    unnorm_key: str | None = arg(None, "Dataset whose statistics un-normalize actions (default: the "
                                       "checkpoint's only one).")
    vlm_path: str | None = arg(None, "Backbone (Qwen3-VL) directory or Hugging Face repo id, when it is "
                                     "no longer where the checkpoint's config.json says.")
    decode_tokens: bool = arg(False, "la_tok only, for analysis: execute the predicted <LA> codes "
                              "decoded by the action tokenizer (the one the checkpoint records) instead of the "
                              "action head's chunk.")
    action_tokenizer_ckpt: str | None = arg(None, "With --decode_tokens: the action tokenizer "
                                            "checkpoint, when it is no longer where the checkpoint's config.json says.")
    render_backend: Literal["auto", "egl", "osmesa"] = arg(
        "auto",
        "Headless rendering (sets MUJOCO_GL and PYOPENGL_PLATFORM); auto keeps MUJOCO_GL or picks EGL, else OSMesa.")
    log_dir: str = arg("logs/libero", "Directory of the run's log file.")
    instruction_source: Literal["auto", "task_name", "bddl"] = arg(
        "auto", "Where the instruction comes from: task_name (the task name's words, the community protocol and the "
        "LIBERO datasets' annotation), bddl (the BDDL file's (:language ...), as LIBERO-PRO's runner reads it); "
        "auto = bddl for the _lan / _task suites (their perturbation exists only there), task_name otherwise.")
    policy_scope: Literal["auto", "one_per_suite", "one_for_all_suites", "unknown"] = arg(
        "auto", "Recorded in the summary: did one policy serve all suites? auto = from the checkpoint's data_mix.")
    # Flags of the paper's run_libero_eval.py, checked against the checkpoint when given.
    vla_id: str | None = arg(None, "If given, must match the checkpoint's vla_id.")
    use_proprio: bool | None = arg(None, "If given, must match the checkpoint's use_proprio.")
    num_images_in_input: int | None = arg(None, "If given, must match the checkpoint's number of input images.")
    use_pro_version: bool | None = arg(None, "If given, must match the checkpoint's use_pro_version.")

    def validate(self) -> None:
        check_suite(self.task_suite_name)
        self.validate_common()

    def validate_common(self) -> None:
        check_min(self, ("num_trials_per_task", "num_workers", "env_image_size", "max_tasks", "max_steps",
                         "num_open_loop_steps", "num_images_in_input"))
        check_min(self, ("num_steps_wait",), 0)
        if any(t < 0 for t in self.task_ids):
            raise LatentVLAError(f"--task_ids must be non-negative, got {self.task_ids}")
        if self.decode_tokens and (self.policy != "vla" or self.policy_server):
            raise LatentVLAError("--decode_tokens needs a local la_tok checkpoint (--policy vla "
                                 "--pretrained_checkpoint DIR); for a policy server, start `latentvla serve` with "
                                 "--decode_tokens True")
        if self.action_tokenizer_ckpt and not self.decode_tokens:
            raise LatentVLAError("--action_tokenizer_ckpt is only used with --decode_tokens True")
        if self.policy == "vla" and not self.pretrained_checkpoint and not self.policy_server:
            raise LatentVLAError("--pretrained_checkpoint DIR is required with --policy vla "
                                 "(or --policy_server HOST:PORT, or --policy random|zero)")


@dataclass
class RobustnessEvalConfig(LiberoEvalConfig):
    """A standard LIBERO suite and each of its LIBERO-PRO perturbations, one `eval libero` run per suite."""

    task_suite_name: str = dataclasses.field(default="libero_goal", init=False)  # set per sub-run
    output_dir: str = arg("", "Results directory: one resumable `eval libero` output dir per suite under it, plus "
                          "robustness.json / robustness.png (default: eval_results/robustness/<suite>-<checkpoint or "
                          "policy>-seed<seed>).")
    num_trials_per_task: int = arg(50, "Episodes per task and suite (capped at a suite's fixed initial states: "
                                   "the _with_milk suites have 10).")
    suite: str = arg("libero_goal", f"Standard suite whose perturbations are evaluated "
                     f"({', '.join(b for b, p in AVAILABLE_PERTURBATIONS.items() if p)}).")
    perturbations: list[str] = arg([], "Perturbations to run next to the original (default: every available one of "
                                   "--suite: lan, object, swap, task, with_mug, with_yellow_book, with_milk).")

    def validate(self) -> None:
        perturbation_suites(self.suite, self.perturbations)  # checks both
        self.task_suite_name = self.suite
        self.validate_common()


@dataclass
class MetaWorldEvalConfig:
    """Closed-loop Meta-World evaluation on held-out seeds (the tasks of `latentvla demo`)."""

    pretrained_checkpoint: str = arg("", "Policy checkpoint directory (a step_<N>/ or a run dir) for --policy vla.")
    policy: Literal["vla", "random", "zero", "expert"] = arg(
        "vla", "vla = the checkpoint; random / zero / expert (Meta-World's scripted expert) need no model.")
    policy_server: str | None = arg(None, "HOST:PORT of a `latentvla serve` policy server to use instead "
                                          "(token: $LATENTVLA_TOKEN).")
    tasks: list[str] = arg(["reach"], "Meta-World tasks (short names of `latentvla demo --tasks`).")
    num_trials_per_task: int = arg(10, "Episodes per task, each from its own held-out seed.")
    max_steps: int = arg(120, "Max policy steps per episode.")
    num_open_loop_steps: int | None = arg(None, "Actions of each chunk executed before re-planning (default: all).")
    image_size: int = arg(64, "Camera resolution rendered by the simulator.")
    seed: int = arg(7, "Seed; episode i of task t starts from seed eval_seed(seed, t, i).")
    output_dir: str = arg("", "Results directory (default: eval_results/metaworld/<checkpoint or policy>-seed<seed>).")
    overwrite: bool = arg(False, "Start over in an existing --output_dir instead of resuming it.")
    num_videos: int = arg(0, "MP4s of the first N trials of each task under <output_dir>/videos/.")
    num_workers: int = arg(1, "Episodes run in this many processes.")
    device: str | None = arg(None, "Torch device of a local VLA policy.")
    unnorm_key: str | None = arg(None, "Dataset whose statistics un-normalize actions (default: the only one).")
    vlm_path: str | None = arg(None, "Backbone directory or Hugging Face repo id, when it moved since training.")
    mujoco_gl: Literal["egl", "osmesa"] = arg("egl", "MuJoCo rendering backend if MUJOCO_GL is not set.")

    def validate(self) -> None:
        from latentvla.eval.metaworld_env import get_task

        for t in self.tasks:  # unknown names fail here
            get_task(t)
        check_min(self, ("num_trials_per_task", "max_steps", "image_size", "num_workers"))
        if self.policy == "vla" and not self.pretrained_checkpoint and not self.policy_server:
            raise LatentVLAError("--pretrained_checkpoint DIR is required with --policy vla (or --policy_server "
                                 "HOST:PORT, or --policy random|zero|expert)")


@dataclass
class EvalCompareConfig:
    """Two evaluations on the same initial states: per-task and overall difference, exact McNemar test."""

    dir_a: str = arg(help="Output dir of evaluation A (`eval libero`, `eval robustness`, or a demo eval/<policy> dir).",
                     positional=True)
    dir_b: str = arg(help="Output dir of evaluation B, on the same suite(s) and initial states.", positional=True)
    alpha: float = arg(0.05, "Significance level of the verdicts.")
    common_only: bool = arg(False, "Compare the episodes both dirs have instead of refusing when their "
                                   "episode sets differ.")
    output_json: str = arg("", "Also write the comparison to this JSON file.")

    def validate(self) -> None:
        if not 0 < self.alpha < 1:
            raise LatentVLAError(f"--alpha must be in (0, 1), got {self.alpha}")
