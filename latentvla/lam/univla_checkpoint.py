"""Read UniVLA's Lightning LAM checkpoints (`lam.md` appendix) into `ImageLatentActionModel`.

UniVLA stores `ckpt["state_dict"]["lam.<name>"]`; our module names mirror `<name>`, so the mapping
is a prefix strip plus, for stage-1 files, the task-irrelevant branch's names (`to_codebook` /
`action_up` there are `to_codebook_uncontrol` / `action_up_uncontrol` here). `dino_encoder.*`
(original DINOv2 layout) is converted by `latentvla.lam.dino`; `text_encoder.*` (T5) is skipped
(stage 1 loads T5 from `--t5_path`).

Key checks: a shape mismatch is always an error (a checkpoint of another size); missing or
unexpected keys are reported and are an error unless `non_strict`. The action-regression head
(`action_decoder.*`) is optional: UniVLA's public stage-2 file has none, and one for another action
dim / pair offset does not fit; either way it starts fresh (with a note).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_image_lam import ImageLAMConfig

OPTIONAL_PREFIXES = ("action_decoder.",)
SKIPPED_PREFIXES = ("dino_encoder.", "text_encoder.")
_STAGE1_RENAMES = {"to_codebook.": "to_codebook_uncontrol.", "action_up.": "action_up_uncontrol."}


def read_lightning_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The LAM tensors of a UniVLA Lightning `.ckpt`, with the `lam.` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise LatentVLAError(f"{path}: LAM checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Lightning checkpoints may pickle hyper-parameters; the user named this local file.
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise LatentVLAError(f"{path}: cannot read as a torch checkpoint ({e})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise LatentVLAError(f"{path}: no state_dict in this checkpoint (expected a UniVLA Lightning .ckpt)")
    out = {}
    for key, value in sd.items():
        if not torch.is_tensor(value):
            continue
        out[key[4:] if key.startswith("lam.") else key] = value
    if "encoder.ffn.1.weight" not in out:
        raise LatentVLAError(f"{path}: not a UniVLA LAM checkpoint (no lam.encoder.ffn.1.weight)")
    return out


def _count_blocks(sd: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.transformer_blocks\.(\d+)\.")
    found = [int(m.group(1)) for k in sd if (m := pat.match(k))]
    return 1 + max(found) if found else 0


def infer_config(sd: dict, *, num_heads: int = 12, image_size: int = 224, patch_size: int = 14,
                 pair_offset: int = 32, source: str = "checkpoint") -> ImageLAMConfig:
    """The architecture of a UniVLA state dict, from its tensor shapes (heads are not stored)."""
    stage = 2 if "vq_action.codebook.weight" in sd else 1
    w_in = sd["encoder.ffn.1.weight"]
    to_cb = sd["to_codebook_uncontrol.weight" if stage == 2 else "to_codebook.weight"]
    action_dim = 0
    if "action_decoder.2.weight" in sd:
        out = sd["action_decoder.2.weight"].shape[0]
        if out % pair_offset:
            raise LatentVLAError(f"{source}: action_decoder.2 has {out} outputs, not a multiple of pair_offset {pair_offset}")
        action_dim = out // pair_offset
    cfg = ImageLAMConfig(
        model_dim=w_in.shape[0], dino_dim=w_in.shape[1],
        enc_blocks=_count_blocks(sd, "encoder"), dec_blocks=_count_blocks(sd, "decoder"),
        num_heads=num_heads, latent_dim=to_cb.shape[0],
        codebook_size=sd["vq_action.codebook.weight" if stage == 2 else "vq.codebook.weight"].shape[0],
        num_codes=sd["action_latent"].shape[2], stage=stage,
        num_patches=(image_size // patch_size) ** 2, image_size=image_size, pair_offset=pair_offset,
        action_dim=action_dim,
        text_dim=sd["lang_proj.weight"].shape[1] if "lang_proj.weight" in sd else 768,
    )
    cfg.validate(source)
    return cfg


def rename_for_stage(sd: dict, stage: int) -> dict:
    if stage == 2:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        for old, new in _STAGE1_RENAMES.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def load_lam_weights(model, sd: dict, *, strict: bool = True, source: str = "checkpoint") -> dict:
    """Copy `sd` (our names) into `model`'s LAM weights; returns {"missing", "unexpected", "fresh"}."""
    own = model.lam_state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith(SKIPPED_PREFIXES)}
    # the action head depends on the robot (k × action dim): a different shape starts it fresh
    sd = {k: v for k, v in sd.items()
          if not (k.startswith(OPTIONAL_PREFIXES) and k in own and tuple(v.shape) != tuple(own[k].shape))}
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise LatentVLAError(f"{source}: checkpoint of a different size/architecture: " + "; ".join(mismatched[:4])
                             + (f" (+{len(mismatched) - 4} more)" if len(mismatched) > 4 else ""))
    missing = sorted(k for k in own if k not in sd and not k.startswith(OPTIONAL_PREFIXES))
    fresh = sorted(k for k in own if k not in sd and k.startswith(OPTIONAL_PREFIXES))
    unexpected = sorted(k for k in sd if k not in own)
    if (missing or unexpected) and strict:
        raise LatentVLAError(
            f"{source}: {len(missing)} missing key(s) {missing[:6]}, {len(unexpected)} unexpected key(s) "
            f"{unexpected[:6]}; pass --non_strict to load anyway")
    if missing or unexpected:
        print(f"warning: {source}: loaded non-strictly; missing {missing}, unexpected {unexpected}")
    if fresh:
        print(f"note: {source}: no {', '.join(sorted({k.split('.')[0] for k in fresh}))} weights; "
              "the action-regression head starts from random initialisation")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected, "fresh": fresh}


def stage_one_transfer(sd: dict) -> dict:
    """Keys carried from a stage-1 checkpoint into stage 2 (UniVLA: names containing vq or action_latent)."""
    return {k: v for k, v in sd.items() if ("vq" in k or "action_latent" in k) and not k.startswith(SKIPPED_PREFIXES)}
