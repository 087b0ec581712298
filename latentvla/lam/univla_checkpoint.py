"""Read UniVLA's Lightning LAM checkpoints into `ImageLatentActionModel`.

UniVLA stores `ckpt["state_dict"]["lam.<name>"]`; our module names mirror `<name>`, so the mapping
is a prefix strip plus, for stage-1 files, the task-irrelevant branch's names (`to_codebook` /
`action_up` there are `to_codebook_uncontrol` / `action_up_uncontrol` here). `dino_encoder.*`
(original DINOv2 layout) is converted by `latentvla.lam.dino`; `text_encoder.*` (T5) is skipped
(stage 1 loads T5 from `--t5_path`).

Key checks: a shape mismatch is always an error (a checkpoint of another size); missing or
unexpected keys are reported and are an error unless `non_strict`. The action-regression head
(`action_decoder.*`) is optional: UniVLA's public stage-2 file has none, and one for another action
dim / pair offset does not fit; either way it starts fresh (with a note).

Settings the weights do not determine come from the Lightning `hyper_parameters` (the model's
init args: UniVLA's `lam_*` sizes and `stage`, the paper's `goal_image_step` / `action_dim`; the
data module's `datamodule_hyper_parameters` may hold `goal_image_step` too). Precedence: explicit
arguments (flags) > stored hyper-parameters > what the weights imply > defaults (12 heads, k = 32);
`resolve_config` says which value came from where. Sizes the weights fix (width, blocks, codebook,
stage) are always taken from the weights; a stored value that disagrees is reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_image_lam import ImageLAMConfig

OPTIONAL_PREFIXES = ("action_decoder.",)
SKIPPED_PREFIXES = ("dino_encoder.", "text_encoder.")
_STAGE1_RENAMES = {"to_codebook.": "to_codebook_uncontrol.", "action_up.": "action_up_uncontrol."}


def _load_lightning(path: str | Path) -> dict:
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
    if not isinstance(ckpt, dict):
        raise LatentVLAError(f"{path}: no state_dict in this checkpoint (expected a UniVLA Lightning .ckpt)")
    return ckpt


def _lam_tensors(ckpt: dict, path: Path) -> dict[str, torch.Tensor]:
    sd = ckpt.get("state_dict", ckpt)
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


def read_lightning_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The LAM tensors of a UniVLA Lightning `.ckpt`, with the `lam.` prefix removed."""
    return _lam_tensors(_load_lightning(path), Path(path))


def read_lightning_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, str]]]:
    """(LAM tensors, stored settings) of a Lightning `.ckpt`, read once (the paper's files are ~2.8 GB)."""
    ckpt = _load_lightning(path)
    return _lam_tensors(ckpt, Path(path)), lightning_settings(ckpt, str(path))


# Config field -> the hyper-parameter names that carry it (UniVLA's DINO_LAM init args; the paper's
# stage-2 model and data module add goal_image_step = k and action_dim = D).
HPARAM_NAMES: dict[str, tuple[str, ...]] = {
    "model_dim": ("lam_model_dim",), "latent_dim": ("lam_latent_dim",), "codebook_size": ("lam_num_latents",),
    "enc_blocks": ("lam_enc_blocks",), "dec_blocks": ("lam_dec_blocks",), "num_heads": ("lam_num_heads",),
    "stage": ("stage",), "pair_offset": ("goal_image_step", "pair_offset"), "action_dim": ("action_dim",),
}
# fields the weights fix: a stored value can only confirm them
SHAPE_FIELDS = ("model_dim", "latent_dim", "codebook_size", "enc_blocks", "dec_blocks", "stage")


def _as_int(value: Any, field: str) -> int | None:
    if isinstance(value, bool):
        return None
    if field == "stage" and isinstance(value, str):  # UniVLA writes "stage-1" / "stage-2"
        value = value.strip().lower().replace("stage", "").strip("-_ ")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def lightning_settings(ckpt: Mapping, source: str = "checkpoint") -> dict[str, tuple[int, str]]:
    """{config field: (value, "hyper_parameters.<name>")} from a Lightning checkpoint dict.

    The model's `hyper_parameters` win over the data module's `datamodule_hyper_parameters`; a value
    that is not an integer is reported and ignored (the weights or the flags then decide).
    """
    out: dict[str, tuple[int, str]] = {}
    for where in ("datamodule_hyper_parameters", "hyper_parameters"):
        hp = ckpt.get(where)
        if not isinstance(hp, Mapping):
            continue
        for field, names in HPARAM_NAMES.items():
            for name in names:
                if name not in hp or hp[name] is None:
                    continue
                value = _as_int(hp[name], field)
                if value is None or value < 1:
                    print(f"warning: {source}: ignoring {where}.{name} = {hp[name]!r} (expected a positive integer)")
                    continue
                out[field] = (value, f"{where}.{name}")
                break
    return out


def _count_blocks(sd: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.transformer_blocks\.(\d+)\.")
    found = [int(m.group(1)) for k in sd if (m := pat.match(k))]
    return 1 + max(found) if found else 0


def infer_config(sd: dict, *, num_heads: int | None = None, image_size: int = 224, patch_size: int = 14,
                 pair_offset: int | None = None, source: str = "checkpoint") -> ImageLAMConfig:
    """The architecture of a UniVLA state dict, from its tensor shapes (heads are not stored)."""
    return resolve_config(sd, num_heads=num_heads, image_size=image_size, patch_size=patch_size,
                          pair_offset=pair_offset, source=source)[0]


def resolve_config(sd: dict, stored: Mapping[str, tuple[int, str]] | None = None, *, num_heads: int | None = None,
                   pair_offset: int | None = None, action_dim: int | None = None, image_size: int = 224,
                   patch_size: int = 14, source: str = "checkpoint") -> tuple[ImageLAMConfig, dict[str, str]]:
    """(config, {field: "value (where from)"}) of a UniVLA state dict.

    `stored`: settings from the checkpoint (`lightning_settings`); `num_heads` / `pair_offset` /
    `action_dim`: explicit values (None = not given), named in messages by their flags. When the
    action head's output count does not fit k × D the head is left out (config action_dim 0) with a
    note saying how to load it: annotation does not use it.
    """
    stored = dict(stored or {})
    names = {"num_heads": "--num_heads", "pair_offset": "--lam_pair_offset", "action_dim": "action_dim"}
    used: dict[str, str] = {}

    def pick(field: str, given: int | None) -> tuple[int | None, str]:
        if given is not None:
            return int(given), names[field]
        if field in stored:
            return stored[field]
        return None, ""

    stage = 2 if "vq_action.codebook.weight" in sd else 1
    w_in = sd["encoder.ffn.1.weight"]
    to_cb = sd["to_codebook_uncontrol.weight" if stage == 2 else "to_codebook.weight"]
    from_weights = {
        "model_dim": int(w_in.shape[0]), "latent_dim": int(to_cb.shape[0]),
        "codebook_size": int(sd["vq_action.codebook.weight" if stage == 2 else "vq.codebook.weight"].shape[0]),
        "enc_blocks": _count_blocks(sd, "encoder"), "dec_blocks": _count_blocks(sd, "decoder"), "stage": stage,
    }
    for field in SHAPE_FIELDS:
        if field in stored and stored[field][0] != from_weights[field]:
            print(f"warning: {source}: {stored[field][1]} = {stored[field][0]} disagrees with the weights "
                  f"({field} {from_weights[field]}); using the weights")
    heads, where = pick("num_heads", num_heads)
    if heads is None:
        heads, where = 12, "default; not stored in the checkpoint, set it with " + names["num_heads"]
    used["num_heads"] = f"{heads} ({where})"
    used["stage"] = f"{stage} (weights)"

    k, k_src = pick("pair_offset", pair_offset)
    d, d_src = pick("action_dim", action_dim)
    head_dim = 0
    if "action_decoder.2.weight" in sd:
        out = int(sd["action_decoder.2.weight"].shape[0])
        problem = None
        # one of k, D given explicitly: the other follows from the weights, not from the stored settings
        if pair_offset is not None and action_dim is None:
            d = None
        elif action_dim is not None and pair_offset is None:
            k = None
        if k is not None and d is not None:
            if k * d == out:
                head_dim = d
            else:
                problem = f"pair_offset {k} ({k_src}) × action_dim {d} ({d_src}) = {k * d}"
        elif k is not None:
            if out % k == 0:
                head_dim, d_src = out // k, f"action_decoder.2 outputs {out} / pair_offset {k}"
            else:
                problem = f"not a multiple of pair_offset {k} ({k_src})"
        elif d is not None and d > 0 and out % d == 0:
            head_dim, k, k_src = d, out // d, f"action_decoder.2 outputs {out} / action_dim {d} ({d_src})"
        elif d is not None:
            problem = f"not a multiple of action_dim {d} ({d_src})"
        elif out % 32 == 0:
            k, head_dim = 32, out // 32
            k_src = "default; the checkpoint stores no goal_image_step"
            d_src = f"action_decoder.2 outputs {out} / pair_offset 32"
        else:
            problem = "not a multiple of the default pair_offset 32, and the checkpoint stores no goal_image_step"
        if problem:
            print(f"note: {source}: action_decoder.2 has {out} outputs, {problem}; the action-regression head is "
                  f"not loaded (annotation does not use it; pass {names['pair_offset']} K, the k it was trained with, "
                  "to load it)")
            d_src = "action head not loaded"
    else:
        d_src = "no action_decoder weights"
    k, k_src = (k, k_src) if k is not None else (32, "default")
    used["pair_offset"] = f"{k} ({k_src})"
    used["action_dim"] = f"{head_dim} ({d_src})"
    cfg = ImageLAMConfig(
        model_dim=from_weights["model_dim"], dino_dim=int(w_in.shape[1]),
        enc_blocks=from_weights["enc_blocks"], dec_blocks=from_weights["dec_blocks"],
        num_heads=heads, latent_dim=from_weights["latent_dim"], codebook_size=from_weights["codebook_size"],
        num_codes=int(sd["action_latent"].shape[2]), stage=stage,
        num_patches=(image_size // patch_size) ** 2, image_size=image_size, pair_offset=k,
        action_dim=head_dim,
        text_dim=int(sd["lang_proj.weight"].shape[1]) if "lang_proj.weight" in sd else 768,
    )
    cfg.validate(source)
    return cfg, used


def describe_settings(used: Mapping[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in used.items())


def check_train_flags(stored: Mapping[str, tuple[int, str]], *, num_heads: int, pair_offset: int, source: str) -> None:
    """`lam image-train --lam_path`: the flags define the model. Heads are not in the weights, so a
    stored head count other than --num_heads would silently split attention differently: an error.
    Another k is a legitimate choice (post-training at a new distance): a note."""
    if "num_heads" in stored and stored["num_heads"][0] != num_heads:
        v, where = stored["num_heads"]
        raise LatentVLAError(f"{source}: trained with {v} attention heads ({where}) but --num_heads is {num_heads}; "
                             f"pass --num_heads {v}")
    if "pair_offset" in stored and stored["pair_offset"][0] != pair_offset:
        v, where = stored["pair_offset"]
        print(f"note: {source}: trained with pair_offset {v} ({where}); continuing with --pair_offset {pair_offset}")


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
