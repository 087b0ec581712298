"""Options of `latentvla demo` (light module: no torch, no mujoco import).

`--scale tiny|small|medium|large` picks a preset of sizes (`SCALES`); every size also has an
explicit flag (default None = take it from the preset), so `--scale small --demos_per_task 50`
grows one knob only. `DemoConfig.resolved()` returns the effective sizes as a `DemoSizes`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from latentvla.config import arg, check_min
from latentvla.errors import LatentVLAError
from latentvla.vla.configuration_vla import STRATEGIES, VLA_IDS

STAGES = ("data", "models", "action_tokenizer", "image_lam", "annotate", "train", "evaluate", "report")


@dataclass(frozen=True)
class DemoSizes:
    """The effective sizes of one demo run (a scale preset with explicit flags applied)."""

    tasks: tuple[str, ...]
    demos_per_task: int
    image_size: int  # rendered and trained at this size (multiple of 32)
    max_episode_steps: int
    eval_episodes_per_task: int
    tokenizer_steps: int
    lam_steps: int
    lam_pair_offset: int
    train_steps: int
    batch_size: int
    learning_rate: float
    vlm_hidden_size: int
    vlm_num_layers: int
    lora_rank: int
    videos_per_variant: int


# Presets. "small" is the default: well under an hour on 2 CPU cores (see README, measured).
SCALES: dict[str, DemoSizes] = {
    "tiny": DemoSizes(tasks=("reach",), demos_per_task=6, image_size=64, max_episode_steps=60,
                      eval_episodes_per_task=2, tokenizer_steps=20, lam_steps=10, lam_pair_offset=4,
                      train_steps=10, batch_size=4, learning_rate=5e-4, vlm_hidden_size=64, vlm_num_layers=2,
                      lora_rank=8, videos_per_variant=1),
    # Tasks whose objects vary little between seeds first: a tiny random backbone trained on a few demos
    # can succeed there (replaying another seed's expert actions blind: drawer-close 75%, drawer-open 50%,
    # button-press 30%, reach 10%; docs/benchmarks.md), so the variants' differences show.
    "small": DemoSizes(tasks=("drawer-close", "drawer-open", "button-press"), demos_per_task=20, image_size=64,
                       max_episode_steps=120, eval_episodes_per_task=10, tokenizer_steps=1000, lam_steps=300,
                       lam_pair_offset=8, train_steps=1000, batch_size=16, learning_rate=1e-3,
                       vlm_hidden_size=64, vlm_num_layers=2, lora_rank=16, videos_per_variant=2),
    "medium": DemoSizes(tasks=("reach", "push", "pick-place", "drawer-open", "button-press"), demos_per_task=50,
                        image_size=128, max_episode_steps=150, eval_episodes_per_task=20, tokenizer_steps=5000,
                        lam_steps=2000, lam_pair_offset=8, train_steps=6000, batch_size=32, learning_rate=3e-4,
                        vlm_hidden_size=128, vlm_num_layers=4, lora_rank=32, videos_per_variant=3),
    "large": DemoSizes(tasks=("reach", "push", "pick-place", "drawer-open", "button-press", "window-open",
                              "button-press-topdown", "drawer-close"), demos_per_task=100, image_size=224,
                       max_episode_steps=200, eval_episodes_per_task=50, tokenizer_steps=20000, lam_steps=10000,
                       lam_pair_offset=8, train_steps=30000, batch_size=64, learning_rate=2e-4,
                       vlm_hidden_size=256, vlm_num_layers=6, lora_rank=64, videos_per_variant=5),
}


@dataclass
class DemoConfig:
    """The whole study end to end on Meta-World: data, latent action models, the variants, evaluation."""

    output_dir: str = arg("runs/demo", "Run directory; every stage writes here and resumes from what is there.")
    scale: Literal["tiny", "small", "medium", "large"] = arg(
        "small",
        "Size preset (tiny: CI, minutes; small: default, < 1 h on 2 CPU cores; medium/large: more time or a GPU).")
    tasks: list[str] | None = arg(None, "Meta-World tasks (short names, e.g. reach,push,pick-place); "
                                        "default: the scale's.")
    demos_per_task: int | None = arg(None, "Scripted-expert demonstrations per task.")
    image_size: int | None = arg(None, "Camera image side (rendered and trained at this size; multiple of 32).")
    max_episode_steps: int | None = arg(None, "Step limit of every episode (demos and evaluation).")
    eval_episodes_per_task: int | None = arg(None, "Closed-loop evaluation episodes per task and variant "
                                                   "(held-out seeds).")
    tokenizer_steps: int | None = arg(None, "Action tokenizer training steps.")
    lam_steps: int | None = arg(None, "Image LAM training steps.")
    lam_pair_offset: int | None = arg(None, "Image LAM frame-pair distance k (training and annotation).")
    train_steps: int | None = arg(None, "VLA training steps per variant.")
    batch_size: int | None = arg(None, "VLA training batch size.")
    learning_rate: float | None = arg(None, "VLA peak learning rate.")
    vlm_hidden_size: int | None = arg(None, "Hidden size of the tiny random Qwen3-VL backbone.")
    vlm_num_layers: int | None = arg(None, "Layers of the tiny random Qwen3-VL backbone.")
    lora_rank: int | None = arg(None, "LoRA rank on the backbone.")
    videos_per_variant: int | None = arg(None, "Rollout MP4s saved per variant (first episodes).")
    variants: list[str] = arg(list(VLA_IDS), "Variants (registered vla_ids) to train and evaluate.")
    vlm_path: str | None = arg(None, "Use this local Qwen3-VL directory instead of writing a tiny random one.")
    action_noise: float = arg(0.1, "Std of Gaussian noise added to the executed expert xyz action (labels stay clean).")
    seed: int = arg(7, "Seed of everything (demo seeds, training, evaluation).")
    seeds: int = arg(1, "Run the whole demo with N seeds (--seed, --seed+1, ...; one resumable run per seed under "
                     "<output_dir>/seed_<s>/) and report each policy's mean success with a 95 percent "
                     "interval across seeds.")
    device: str | None = arg(None, "cuda or cpu for training/evaluation (default: cuda when available).")
    num_workers: int = arg(0, "DataLoader workers for training (0 = in the main process; best on 2 cores).")
    restart_from: str | None = arg(None, "Redo this stage and every later one (" + ", ".join(STAGES) + ").")
    stop_after: str | None = arg(None, "Stop after this stage (" + ", ".join(STAGES) + ").")
    mujoco_gl: str = arg("egl", "MuJoCo rendering backend if MUJOCO_GL is not set: egl or osmesa.")

    def validate(self) -> None:
        if self.restart_from is not None and self.restart_from not in STAGES:
            raise LatentVLAError(f"demo --restart_from: unknown stage {self.restart_from!r}; stages: "
                                 f"{', '.join(STAGES)}")
        if self.stop_after is not None and self.stop_after not in STAGES:
            raise LatentVLAError(f"demo --stop_after: unknown stage {self.stop_after!r}; stages: {', '.join(STAGES)}")
        bad = [v for v in self.variants if v not in STRATEGIES]
        if bad or not self.variants:
            raise LatentVLAError(f"demo --variants: unknown {bad or 'empty list'}; choose from {', '.join(STRATEGIES)}")
        if self.mujoco_gl not in ("egl", "osmesa", "glfw"):
            raise LatentVLAError(f"demo --mujoco_gl: expected egl or osmesa, got {self.mujoco_gl!r}")
        check_min(self, ("seeds",), prefix="demo --")
        check_min(self, ("action_noise",), 0, prefix="demo --")
        self.resolved()

    def resolved(self) -> DemoSizes:
        """The preset of `scale` with every explicit size flag applied, checked."""
        if self.scale not in SCALES:
            raise LatentVLAError(f"demo --scale: expected one of {', '.join(SCALES)}, got {self.scale!r}")
        base = SCALES[self.scale]
        over = {}
        for f in dataclasses.fields(DemoSizes):
            v = getattr(self, f.name)
            if v is not None:
                over[f.name] = tuple(v) if f.name == "tasks" else v
        sizes = dataclasses.replace(base, **over)
        check_sizes(sizes)
        return sizes


def check_sizes(s: DemoSizes) -> None:
    from latentvla.eval.metaworld_env import TASKS

    unknown = [t for t in s.tasks if t not in TASKS]
    if unknown or not s.tasks:
        raise LatentVLAError(f"demo --tasks: unknown {unknown or 'empty list'}; known: {', '.join(TASKS)}")
    if s.image_size < 32 or s.image_size % 32:
        raise LatentVLAError(f"demo --image_size must be a positive multiple of 32, got {s.image_size}")
    check_min(s, ("demos_per_task", "max_episode_steps", "eval_episodes_per_task", "tokenizer_steps", "lam_steps",
                  "lam_pair_offset", "train_steps", "batch_size", "vlm_hidden_size", "vlm_num_layers", "lora_rank"),
              prefix="demo --")
    check_min(s, ("videos_per_variant",), 0, prefix="demo --")
    if s.learning_rate <= 0:
        raise LatentVLAError(f"demo --learning_rate must be > 0, got {s.learning_rate}")
