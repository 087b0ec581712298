"""Paper-compatible entry point: `python experiments/robot/libero/run_libero_eval.py --flags ...`.

A thin shim over `latentvla eval libero` (see docs/evaluation.md). Flags of the OpenVLA-OFT-style
script that have no meaning here (model family, FiLM, quantization, wandb, ...) are accepted and
ignored with a note; `--local_log_dir` maps to `--log_dir`, `--save_rollout_video` to
`--save_videos`. Everything else goes to `latentvla eval libero` unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run from a checkout without installing

IGNORED = {"--model_family", "--use_film", "--use_l1_regression", "--use_diffusion", "--num_diffusion_steps",
           "--num_diffusion_steps_train", "--num_diffusion_steps_inference", "--load_in_8bit", "--load_in_4bit",
           "--lora_rank", "--run_id_note", "--use_wandb", "--wandb_entity", "--wandb_project", "--initial_states_path",
           "--env_img_res", "--use_minivlm", "--save_version", "--phase"}
RENAMED = {"--local_log_dir": "--log_dir", "--save_rollout_video": "--save_videos",
           "--num_steps_wait": "--num_steps_wait"}


def translate(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        flag, eq, value = tok.partition("=")
        takes_value = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if flag in IGNORED:
            print(f"run_libero_eval.py: ignoring {flag} (not used by latentvla)", file=sys.stderr)
            i += 1 if eq or not takes_value else 2
            continue
        flag = RENAMED.get(flag, flag)
        out.append(flag + (eq + value if eq else ""))
        i += 1
    return out


def main() -> int:
    from latentvla.cli import run_command

    return run_command("eval libero", translate(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
