"""Light facts about a policy checkpoint, read from its `config.json` without loading weights.

Used for the run metadata, the compatibility flags of the paper's script (`--vla_id`,
`--use_proprio`, `--num_images_in_input`, `--use_pro_version`) and `policy_scope`; how the policy
takes its inputs is `latentvla.vla.policy_io.load_policy_io`. The layout is the one
`latentvla.vla.checkpoint.save_policy_checkpoint` writes (sections vla, platform, train).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError
from latentvla.utils.json_files import read_json

LIBERO_DATASET_PREFIXES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


def read_checkpoint_info(ckpt_dir: str) -> dict:
    from latentvla.vla.checkpoint import resolve_policy_dir  # light: no torch at import

    ckpt_dir = str(resolve_policy_dir(ckpt_dir))  # a run dir / `latest` pointer -> its newest checkpoint
    path = Path(ckpt_dir) / "config.json"
    if not Path(ckpt_dir).is_dir():
        raise LatentVLAError(f"--pretrained_checkpoint {ckpt_dir}: not a directory")
    if not path.is_file():
        raise LatentVLAError(f"--pretrained_checkpoint {ckpt_dir}: no config.json (is this a policy checkpoint dir?)")
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise LatentVLAError(f"{path}: expected a JSON object")
    vla, platform, train = (cfg.get(k) if isinstance(cfg.get(k), Mapping) else {} for k in ("vla", "platform", "train"))
    num_images, wrist = vla.get("num_images_in_input"), vla.get("use_wrist_image")
    return {"vla_id": vla.get("vla_id"), "platform": platform.get("name"), "use_proprio": vla.get("use_proprio"),
            "num_images_in_input": num_images if num_images is not None or wrist is None else 2 if wrist else 1,
            "use_pro_version": vla.get("use_pro_version"), "data_mix": train.get("data_mix")}


def infer_policy_scope(data_mix: Any, suite: str) -> str:
    """one_per_suite / one_for_all_suites / unknown, from a checkpoint's data_mix."""
    if data_mix is None:
        return "unknown"
    names = data_mix
    if isinstance(data_mix, str):
        try:
            names = json.loads(data_mix)
        except json.JSONDecodeError:
            names = [data_mix]
    if isinstance(names, str):
        names = [names]
    libero = {p for n in names for p in LIBERO_DATASET_PREFIXES if str(n).startswith(p)}
    if str(data_mix) in ("libero_4_task_suites", "libero_all") or len(libero) > 1:
        return "one_for_all_suites"
    if libero == {suite}:
        return "one_per_suite"
    return "unknown"


def check_compat_flags(info: Mapping[str, Any], flags: Mapping[str, Any], ckpt_dir: str) -> None:
    """Flags given on the command line must agree with the checkpoint (None = not given / unknown)."""
    for name, wanted in flags.items():
        have = info.get(name)
        if wanted is None or have is None:
            continue
        if have != wanted:
            raise LatentVLAError(f"--{name} {wanted} does not match the checkpoint {ckpt_dir} ({name}={have!r}); "
                                 "drop the flag or pick the right checkpoint")
