"""Image-LAM checkpoints: our directory format, and loading either ours or a UniVLA `.ckpt`.

Our checkpoint directory (written atomically):
- `config.json`: `{"format": "latentvla-image-lam", "lam": ImageLAMConfig, "dino": HF DINO config,
  "t5_path": ..., "step": N, "train": train options}`
- `model.safetensors`: the LAM weights (UniVLA names without `lam.`) plus the frozen DINO backbone
  under `dino_encoder.model.*` (transformers names), so annotation needs nothing else.
- `training_state.pt` (training checkpoints only): optimizer, step, sampler and RNG state.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_image_lam import ImageLAMConfig
from latentvla.lam.dino import (
    DinoFeatures,
    dino_from_config_dict,
    dino_from_original,
    is_original_dino_state_dict,
    load_dino,
)
from latentvla.lam.image_lam import ImageLatentActionModel
from latentvla.lam.univla_checkpoint import (
    describe_settings,
    load_lam_weights,
    read_lightning_checkpoint,
    read_lightning_state_dict,
    rename_for_stage,
    resolve_config,
)
from latentvla.utils.atomic import atomic_directory, atomic_write_json
from latentvla.utils.weight_files import load_safetensors

FORMAT = "latentvla-image-lam"


def save_lam_checkpoint(path: str | Path, model: ImageLatentActionModel, *, step: int, train: dict | None = None,
                        t5_path: str | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_directory(path, overwrite=True) as tmp:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.lam_state_dict().items()}
        for k, v in model.dino_encoder.state_dict().items():
            tensors[f"dino_encoder.{k}"] = v.detach().to("cpu").contiguous()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        atomic_write_json(tmp / "config.json", {
            "format": FORMAT, "lam": model.config.to_dict(), "dino": model.dino_encoder.model.config.to_dict(),
            "t5_path": t5_path, "step": step, "train": train or {},
        })
    return path


def resolve_lam_checkpoint(path: str | Path) -> Path:
    """A LAM checkpoint dir, also given as a `lam image-train` run dir, its `checkpoints/` dir or the
    `checkpoints/latest` pointer: those resolve to the newest checkpoint (the pointer's, else the
    highest step_N). A file (UniVLA `.ckpt`) or a missing path is returned unchanged."""
    path = Path(path)
    if path.is_file() and path.name == "latest":
        root = path.parent
    elif not path.is_dir() or (path / "config.json").is_file():
        return path
    else:
        root = path if path.name == "checkpoints" else path / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if not (target / "config.json").is_file():
            raise LatentVLAError(f"{pointer} names {target.name!r}, which is not a complete LAM checkpoint "
                                 "(no config.json)")
        return target
    steps = sorted((int(d.name[5:]), d) for d in (root.iterdir() if root.is_dir() else [])
                   if d.is_dir() and d.name.startswith("step_") and d.name[5:].isdigit()
                   and (d / "config.json").is_file())
    if steps:
        return steps[-1][1]
    raise LatentVLAError(f"{path}: neither an image-LAM checkpoint (no config.json) nor a `latentvla lam image-train` "
                         "run directory (no checkpoints/step_N/); expected such a directory or a UniVLA .ckpt file")


def read_checkpoint_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LatentVLAError(f"{path}/config.json: cannot read LAM checkpoint config ({e})") from None
    if meta.get("format") != FORMAT:
        raise LatentVLAError(f"{path}: not an image-LAM checkpoint (config.json format {meta.get('format')!r})")
    return meta


def _build(cfg: ImageLAMConfig, dino: DinoFeatures, t5_path: str | None,
           with_text_encoder: bool) -> ImageLatentActionModel:
    if dino.hidden_size != cfg.dino_dim:
        raise LatentVLAError(f"DINO backbone width {dino.hidden_size} does not match the LAM's dino_dim {cfg.dino_dim}")
    text = None
    if cfg.stage == 1 and with_text_encoder:
        if not t5_path:
            raise LatentVLAError("a stage-1 LAM needs --t5_path (local T5 encoder directory)")
        from latentvla.lam.image_lam import T5TextEncoder

        text = T5TextEncoder(t5_path)
    return ImageLatentActionModel(cfg, dino=dino, text_encoder=text)


def load_image_lam(path: str | Path, *, dino_path: str | None = None, t5_path: str | None = None,
                   num_heads: int | None = None, pair_offset: int | None = None, action_dim: int | None = None,
                   strict: bool = True, with_text_encoder: bool = True) -> tuple[ImageLatentActionModel, dict]:
    """Load a LAM (our checkpoint dir or a UniVLA Lightning `.ckpt`) on CPU in fp32.

    Returns (model, meta) where meta holds "step", "source" and, for a `.ckpt`, "settings" ({field:
    "value (where from)"}, also printed). `with_text_encoder=False` skips T5 for stage-1 models used
    only to encode (the encoder does not need language at inference in stage 2; stage-1 annotation
    still needs it and keeps it). `num_heads` / `pair_offset` / `action_dim` override what a `.ckpt`
    stores in its hyper-parameters (None: use those, else the defaults 12 / 32 / from the weights).
    """
    path = resolve_lam_checkpoint(path)
    if path.is_dir():
        meta = read_checkpoint_config(path)
        cfg = ImageLAMConfig.from_dict(meta["lam"], source=f"{path}/config.json")
        tensors = load_safetensors(path / "model.safetensors")
        dino = load_dino(dino_path) if dino_path else _stored_dino(path, meta, tensors)
        model = _build(cfg, dino, t5_path or meta.get("t5_path"), with_text_encoder)
        load_lam_weights(model, tensors, strict=strict, source=str(path))
        return model.float().eval(), {"step": int(meta.get("step", 0)), "source": str(path),
                                      "t5_path": meta.get("t5_path")}
    sd, stored = read_lightning_checkpoint(path)
    dino = load_dino(dino_path) if dino_path else _stored_dino(path, None, sd)
    # The public DINOv2 weights are stored at 518 px; UniVLA feeds 224 px frames (256 patches).
    native = int(dino.model.config.image_size)
    image_size = 224 if native == 518 else native
    cfg, used = resolve_config(sd, stored, num_heads=num_heads, pair_offset=pair_offset, action_dim=action_dim,
                               image_size=image_size, patch_size=dino.patch_size, source=str(path))
    print(f"note: {path}: LAM settings: {describe_settings(used)}")
    if cfg.action_dim == 0:  # no head, or one whose k × D is unknown: leave it out (reported by resolve_config)
        sd = {k: v for k, v in sd.items() if not k.startswith("action_decoder.")}
    model = _build(cfg, dino, t5_path, with_text_encoder)
    load_lam_weights(model, rename_for_stage(sd, cfg.stage), strict=strict, source=str(path))
    return model.float().eval(), {"step": 0, "source": str(path), "t5_path": t5_path, "settings": used}


def _stored_dino(path: Path, meta: dict | None, tensors: dict) -> DinoFeatures:
    """The DINO backbone inside a checkpoint: ours (`meta` given, HF names) or UniVLA's (original layout)."""
    if meta is None:
        if not is_original_dino_state_dict(tensors, "dino_encoder."):
            raise LatentVLAError(f"{path}: checkpoint carries no dino_encoder weights; pass --dino_path")
        return dino_from_original(tensors, "dino_encoder.", source=f"{path} (dino_encoder.*)")
    dino = dino_from_config_dict(meta["dino"])
    dsd = {k[len("dino_encoder."):]: v for k, v in tensors.items() if k.startswith("dino_encoder.")}
    missing = dino.load_state_dict(dsd, strict=False).missing_keys
    if missing:
        raise LatentVLAError(f"{path}: checkpoint lacks DINO weights ({missing[:3]}); pass --dino_path")
    return dino


def checkpoint_dino(path: str | Path) -> DinoFeatures:
    """The frozen DINO stored in a LAM checkpoint of either format (for `--lam_path` without `--dino_path`)."""
    path = resolve_lam_checkpoint(path)
    if path.is_dir():
        return _stored_dino(path, read_checkpoint_config(path), load_safetensors(path / "model.safetensors"))
    return _stored_dino(path, None, read_lightning_state_dict(path))


def read_lam_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """LAM tensors (our names) and stage of a checkpoint of either format (for --stage_one_ckpt)."""
    tensors, stage, _ = read_lam_checkpoint(path)
    return tensors, stage


def read_lam_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None, dict[str, tuple[int, str]]]:
    """(tensors, stage, stored settings {field: (value, where)}) of a checkpoint of either format:
    ours from config.json, a `.ckpt` from its Lightning hyper-parameters."""
    path = resolve_lam_checkpoint(path)
    if path.is_dir():
        lam = read_checkpoint_config(path)["lam"]
        stored = {k: (int(lam[k]), f"config.json lam.{k}") for k in ("num_heads", "pair_offset") if k in lam}
        return load_safetensors(path / "model.safetensors"), int(lam["stage"]), stored
    sd, stored = read_lightning_checkpoint(path)
    stage = 2 if "vq_action.codebook.weight" in sd else 1
    return rename_for_stage(sd, stage), stage, stored
