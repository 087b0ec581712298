"""Policy checkpoints: trainable weights + config + dataset statistics + library versions.

A checkpoint directory holds
- `model.safetensors`: `LatentVLA.trainable_state_dict()` (LoRA, new token rows, head, proprio
  projector, strategy modules) — the frozen backbone is re-read from `vla.vlm_path`;
- `config.json`: `{"format": "latentvla-policy", "format_version", "vla": VLAConfig, "platform":
  Platform.to_dict(), "train": train config}`;
- `dataset_statistics.json`: `{dataset_name: stats}` (`latentvla.data.statistics`), used to un-normalize;
- `versions.json`: torch / transformers / peft / latentvla versions it was written with;
- `policy_io.json`: the inference-time input/output recipe (`latentvla.vla.policy_io`).
Written atomically (the directory appears complete or not at all).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError
from latentvla.utils.atomic import atomic_directory
from latentvla.utils.json_files import read_json

FORMAT = "latentvla-policy"
FORMAT_VERSION = 1
MERGED_FORMAT = "latentvla-merged"  # safetensors metadata of the `--merge_lora` export (train/run.py)
FILES = ("model.safetensors", "config.json", "dataset_statistics.json", "versions.json", "policy_io.json")


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import latentvla

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "latentvla": latentvla.__version__}


def save_policy_checkpoint(directory: str | Path, model, train_config: dict | None, statistics: dict,
                           overwrite: bool = True) -> Path:
    from safetensors.torch import save_file

    from latentvla.config import config_to_dict
    from latentvla.vla.policy_io import FILE, policy_io_from_config

    directory = Path(directory)
    vla = config_to_dict(model.cfg)
    if vla.get("vlm_path"):
        vla["vlm_path"] = str(Path(vla["vlm_path"]).resolve())
    train = dict(train_config or {})
    if train.get("action_tokenizer_ckpt"):  # absolute, so `--decode_tokens` finds it from any working directory
        train["action_tokenizer_ckpt"] = str(Path(train["action_tokenizer_ckpt"]).resolve())
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "vla": vla,
              "platform": model.platform.to_dict(), "train": train}
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.trainable_state_dict().items()}
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        (tmp / "dataset_statistics.json").write_text(json.dumps(statistics, indent=2) + "\n")
        (tmp / "versions.json").write_text(json.dumps(library_versions(), indent=2) + "\n")
        (tmp / FILE).write_text(json.dumps(policy_io_from_config(config, statistics).to_json(), indent=2) + "\n")
    return directory


def _read_json(path: Path) -> Any:
    return read_json(path, missing="not found (not a policy checkpoint written by latentvla?)")


def check_versions(directory: Path) -> list[str]:
    """Warn for every library whose version differs from the one the checkpoint was trained with."""
    f = directory / "versions.json"
    if not f.is_file():
        warnings.warn(f"{f} missing: cannot check the torch/transformers/peft versions the policy was trained with",
                      stacklevel=1)
        return []
    saved, now = _read_json(f), library_versions()
    diffs = [f"{k} {saved[k]} -> {now[k]}"
             for k in ("torch", "transformers", "peft") if k in saved and saved[k] != now[k]]
    if diffs:
        warnings.warn(f"{directory}: library versions differ from training ({', '.join(diffs)}); a changed "
                      "transformers build can silently change the policy's behaviour", stacklevel=1)
    return diffs


def resolve_policy_dir(directory: str | Path) -> Path:
    """A policy checkpoint directory, also given as a training run dir (`<run>/`), its
    `checkpoints/` dir or the `checkpoints/latest` pointer file: those resolve to the newest
    checkpoint the pointer names, so users can pass what `latentvla train` printed."""
    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    for pointer in (directory, directory / "latest", directory / "checkpoints" / "latest"):
        if pointer.is_file() and pointer.name == "latest":
            target = pointer.parent / pointer.read_text().strip()
            if not (target / "config.json").is_file():
                raise LatentVLAError(f"{pointer} names {target.name!r}, which is not a complete policy checkpoint")
            return target
    return directory


def load_policy_model(directory: str | Path, device: str | None = "cpu", vlm_path: str | None = None,
                      action_tokenizer=None):
    """-> (LatentVLA in eval mode with the trained weights, config dict, statistics dict)."""
    from latentvla.config import config_from_dict
    from latentvla.robots import Platform
    from latentvla.vla.configuration_vla import VLAConfig
    from latentvla.vla.modeling_vla import LatentVLA

    directory = resolve_policy_dir(directory)
    if not directory.is_dir():
        raise LatentVLAError(f"policy checkpoint {directory}: directory not found")
    config = _read_json(directory / "config.json")
    if (not isinstance(config, dict) or config.get("format") != FORMAT or "vla" not in config
            or "platform" not in config):
        raise LatentVLAError(f"{directory / 'config.json'}: not a {FORMAT} config (needs keys format, vla, platform)")
    statistics = _read_json(directory / "dataset_statistics.json")
    check_versions(directory)
    vla = dict(config["vla"])
    if vlm_path:
        vla["vlm_path"] = vlm_path
    if not Path(vla.get("vlm_path") or "").is_dir():
        raise LatentVLAError(f"{directory}: backbone directory {vla.get('vlm_path')!r} recorded in "
                             "config.json does not exist here; pass vlm_path=... (CLI: --vlm_path of `latentvla serve` "
                             "/ `latentvla eval libero`) pointing to the same Qwen3-VL directory")
    cfg = config_from_dict(VLAConfig, vla, source=str(directory / "config.json"))
    platform = Platform.from_dict(config["platform"], source=str(directory / "config.json"))
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise LatentVLAError(f"{weights}: not found")
    import dataclasses

    from safetensors import safe_open

    from latentvla.utils.weight_files import check_safetensors, load_safetensors

    # a truncated file, named, before any model is built
    check_safetensors(weights, "use another checkpoint of the run")

    with safe_open(str(weights), "pt") as f:
        merged = (f.metadata() or {}).get("format") == MERGED_FORMAT
        if cfg.head_dim is None and "action_head.chunk_queries" in f.keys():
            # The head width the weights were trained with: checkpoints written before the default
            # changed (head_dim = H, now H/4) keep loading.
            cfg = dataclasses.replace(cfg, head_dim=int(f.get_slice("action_head.chunk_queries").get_shape()[1]))
    if merged:  # `latentvla train --merge_lora True` export: full weights, LoRA folded in
        cfg = dataclasses.replace(cfg, lora_rank=0)
    model = LatentVLA.from_config(cfg, platform, action_tokenizer=action_tokenizer, device=device)
    if merged:
        model.load_merged_state_dict(load_safetensors(weights), source=str(weights))
    else:
        model.load_trainable_state_dict(load_safetensors(weights), source=str(weights))
    model.eval()
    return model, config, statistics
