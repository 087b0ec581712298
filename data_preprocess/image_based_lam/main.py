"""Paper-compatible shim: `python main.py fit --config config/lam-stage-2.yaml [--section.key value ...]`.

Maps the Lightning-CLI YAML of the paper / UniVLA onto `latentvla lam image-train`:

| YAML                                                  | flag                         |
|-------------------------------------------------------|------------------------------|
| model.lam_path / model.stage_one_ckpt                 | --lam_path / --stage_one_ckpt|
| model.dino_path / model.t5_path (ours; UniVLA used torch.hub) | --dino_path / --t5_path |
| model.stage ("stage-1" / "stage-2")                   | --stage                      |
| model.lam_model_dim, lam_latent_dim, lam_num_latents, lam_enc_blocks, lam_dec_blocks, lam_num_heads | size flags |
| model.pair_offset, or the paper's model.goal_image_step / data.goal_image_step | --pair_offset |
| model.vq_beta, model.optimizer.init_args.{lr, weight_decay} | --commitment_weight, --learning_rate, --weight_decay |
| model.task_name, model.log_path                        | --run_id, --results_dir      |
| data.data_root_dir (or data.data_root), data.data_mix, data.batch_size, data.resolution, data.image_aug | data flags |
| trainer.max_steps, trainer.gradient_clip_val            | --max_steps, --grad_clip     |
| trainer.precision, trainer.log_every_n_steps           | --mixed_precision, --log_every |
| trainer.callbacks[ModelCheckpoint].init_args.{dirpath, every_n_train_steps} | run dir, --save_every |
| trainer.devices (> 1)                                  | relaunch under torchrun      |

Keys with no counterpart (shuffle_buffer_size, num_frames, lam_patch_size, ...) are reported and
ignored. `--section.key value` arguments override the YAML, like Lightning's CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DIRECT = {
    ("model", "lam_path"): "lam_path", ("model", "stage_one_ckpt"): "stage_one_ckpt",
    ("model", "dino_path"): "dino_path", ("model", "t5_path"): "t5_path",
    ("model", "lam_model_dim"): "model_dim", ("model", "lam_latent_dim"): "latent_dim",
    ("model", "lam_num_latents"): "codebook_size", ("model", "lam_enc_blocks"): "enc_blocks",
    ("model", "lam_dec_blocks"): "dec_blocks", ("model", "lam_num_heads"): "num_heads",
    ("model", "vq_beta"): "commitment_weight", ("model", "task_name"): "run_id", ("model", "log_path"): "results_dir",
    ("model", "pair_offset"): "pair_offset", ("model", "goal_image_step"): "pair_offset",
    ("data", "goal_image_step"): "pair_offset", ("model", "num_codes"): "num_codes",
    ("model", "action_loss_weight"): "action_loss_weight", ("model", "action_loss_fraction"): "action_loss_fraction",
    ("data", "data_root_dir"): "data_root_dir", ("data", "data_root"): "data_root_dir",
    ("data", "data_mix"): "data_mix",
    ("data", "batch_size"): "batch_size", ("data", "resolution"): "image_size", ("data", "image_aug"): "image_aug",
    ("data", "num_workers"): "num_workers",
    ("trainer", "max_steps"): "max_steps", ("trainer", "gradient_clip_val"): "grad_clip",
    ("trainer", "log_every_n_steps"): "log_every",
}
PRECISION = {"16-mixed": "fp16", "16": "fp16", "bf16-mixed": "bf16", "bf16": "bf16", "32": "no", "32-true": "no"}


def _set_dotted(cfg: dict, dotted: str, value: str) -> None:
    import yaml

    node = cfg
    *path, last = dotted.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(value)


def translate(cfg: dict) -> tuple[list[str], int, list[str]]:
    """(image-train argv, number of devices, ignored keys) for a paper YAML mapping."""
    flags: dict[str, object] = {}
    ignored = []
    for section in ("model", "data", "trainer"):
        for key, value in (cfg.get(section) or {}).items():
            if (section, key) in DIRECT:
                if value is not None:
                    flags[DIRECT[(section, key)]] = value
            elif (section, key) == ("model", "stage"):
                flags["stage"] = 1 if str(value).strip().endswith("1") else 2
            elif (section, key) == ("model", "optimizer"):
                init = (value or {}).get("init_args") or {}
                if "lr" in init:
                    flags["learning_rate"] = init["lr"]
                if "weight_decay" in init:
                    flags["weight_decay"] = init["weight_decay"]
            elif (section, key) == ("trainer", "precision"):
                flags["mixed_precision"] = PRECISION.get(str(value), "auto")
            elif (section, key) == ("trainer", "callbacks"):
                for cb in value or []:
                    if str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
                        init = cb.get("init_args") or {}
                        if init.get("dirpath"):
                            d = Path(str(init["dirpath"]))
                            flags["results_dir"], flags["run_id"] = str(d.parent), d.name
                        if init.get("every_n_train_steps"):
                            flags["save_every"] = init["every_n_train_steps"]
            elif (section, key) != ("trainer", "devices"):
                ignored.append(f"{section}.{key}")
    devices = (cfg.get("trainer") or {}).get("devices", 1)
    devices = int(devices) if str(devices).isdigit() else 1
    argv = []
    for name, value in flags.items():
        argv += [f"--{name}", str(value)]
    return argv, devices, ignored


def main(argv: list[str] | None = None) -> int:
    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "fit" or "--config" not in argv:
        print("usage: python main.py fit --config config/lam-stage-2.yaml [--section.key value ...]", file=sys.stderr)
        return 2
    rest = argv[1:]
    i = rest.index("--config")
    path = Path(rest[i + 1])
    if not path.is_file():
        print(f"main.py: error: --config {path}: file not found", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(path.read_text()) or {}
    rest = rest[:i] + rest[i + 2:]
    for j in range(0, len(rest) - 1, 2):
        if rest[j].startswith("--") and "." in rest[j]:
            _set_dotted(cfg, rest[j][2:], rest[j + 1])
    train_argv, devices, ignored = translate(cfg)
    if ignored:
        print(f"main.py: ignoring keys without a latentvla counterpart: {', '.join(ignored)}")
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={devices}", "-m", "latentvla",
               "lam", "image-train", *train_argv]
        return subprocess.call(cmd)
    from latentvla.cli import run_command

    return run_command("lam image-train", train_argv)


if __name__ == "__main__":
    sys.exit(main())
