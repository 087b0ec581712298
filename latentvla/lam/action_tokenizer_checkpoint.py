"""Tokenizer checkpoints `tokenizer_step_{N}.pt` (the paper's file layout, plus our metadata).

A file is a dict with the paper's three state dicts `encoder`, `vq`, `decoder`, plus (ours) `config`
(ActionTokenizerConfig dict), `statistics` ({dataset_name: stats} used to normalize), `platform`
(the platform dict), `step`, and for resuming `optimizer`, `rng` and `trainer` state. The paper's
own files hold only the three state dicts: their sizes are inferred from the tensor shapes (chunk
length then unknown = any length; heads default to 4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentvla.errors import LatentVLAError
from latentvla.lam.action_tokenizer import ActionTokenizerModel
from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig
from latentvla.utils.atomic import atomic_path

REQUIRED_KEYS = ("encoder", "vq", "decoder")
_STEP_RE = re.compile(r"^tokenizer_step_(\d+)\.pt$")


@dataclass
class LoadedTokenizer:
    model: ActionTokenizerModel
    statistics: dict
    platform: dict | None
    step: int
    config_inferred: bool
    extra: dict = field(default_factory=dict)  # optimizer / rng / trainer state when present


def checkpoint_name(step: int) -> str:
    return f"tokenizer_step_{step}.pt"


def list_checkpoints(results_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete tokenizer_step_{N}.pt in `results_dir`, oldest first."""
    d = Path(results_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_tokenizer_checkpoint(path: str | Path, model: ActionTokenizerModel, *, step: int, statistics: Mapping,
                              platform: Mapping | None, extra: Mapping[str, Any] | None = None) -> Path:
    payload = {
        "encoder": model.encoder.state_dict(),
        "vq": model.vq.state_dict(),
        "decoder": model.decoder.state_dict(),
        "config": model.config.to_dict(),
        "statistics": dict(statistics),
        "platform": None if platform is None else dict(platform),
        "step": int(step),
        **dict(extra or {}),
    }
    payload = {k: _to_cpu(v) for k, v in payload.items()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _to_cpu(v: Any) -> Any:
    if torch.is_tensor(v):
        return v.detach().cpu()
    if isinstance(v, dict):
        return {k: _to_cpu(x) for k, x in v.items()}
    return v


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pre in ("module.", "_orig_mod."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def infer_config(encoder: Mapping, vq: Mapping, decoder: Mapping, source: str) -> ActionTokenizerConfig:
    """Sizes of a config-less (paper) checkpoint from its tensor shapes."""
    try:
        hidden, in3 = encoder["in_proj.weight"].shape
        emb = vq["embedding"] if "embedding" in vq else vq["embedding.weight"]
        dec_hidden = decoder["net.0.weight"].shape[0]
        action_dim = decoder["net.2.weight"].shape[0]
        ffn = encoder["transformer.layers.0.linear1.weight"].shape[0]
    except KeyError as e:
        raise LatentVLAError(f"{source}: state dict lacks {e.args[0]!r} (expected the paper's "
                             "tokenizer layout: encoder.in_proj/conv1-3/transformer, vq.embedding, "
                             "decoder.net)") from None
    if in3 != 3 * action_dim:
        raise LatentVLAError(f"{source}: encoder.in_proj takes {in3} features but the decoder outputs {action_dim} "
                             f"action dims (expected 3 x {action_dim})")
    layers = {int(m.group(1)) for k in encoder for m in [re.match(r"transformer\.layers\.(\d+)\.", k)] if m}
    heads = 4 if hidden % 4 == 0 else 1
    return ActionTokenizerConfig(action_dim=int(action_dim), chunk_len=None, hidden_dim=int(hidden),
                                 codebook_size=int(emb.shape[0]), num_heads=heads, ffn_dim=int(ffn),
                                 num_layers=max(layers) + 1, decoder_hidden_dim=int(dec_hidden)).validate(source)


def load_tokenizer_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedTokenizer:
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise LatentVLAError(f"{path}: no tokenizer_step_{{N}}.pt in this directory")
        path = found[-1][1]
    if not path.is_file():
        raise LatentVLAError(f"{path}: tokenizer checkpoint not found")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or unsafe pickle content
        raise LatentVLAError(f"{path}: cannot read tokenizer checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise LatentVLAError(f"{path}: expected a dict with keys {', '.join(REQUIRED_KEYS)}, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise LatentVLAError(f"{path}: checkpoint lacks key(s) {', '.join(missing)}; a tokenizer checkpoint holds "
                             f"{', '.join(REQUIRED_KEYS)} state dicts (found: {', '.join(map(str, raw)) or 'none'})")
    enc, vq, dec = (_strip_prefix(raw[k]) for k in REQUIRED_KEYS)
    if "config" in raw and raw["config"] is not None:
        cfg = ActionTokenizerConfig.from_dict(raw["config"], source=f"{path} config")
        inferred = False
    else:
        cfg = infer_config(enc, vq, dec, source=str(path))
        inferred = True
    model = ActionTokenizerModel(cfg)
    for name, module, sd in (("encoder", model.encoder, enc), ("vq", model.vq, vq), ("decoder", model.decoder, dec)):
        _load_part(module, sd, f"{path} [{name}]")
    extra = {k: v for k, v in raw.items() if k not in (*REQUIRED_KEYS, "config", "statistics", "platform", "step")}
    return LoadedTokenizer(model=model.to(map_location), statistics=dict(raw.get("statistics") or {}),
                           platform=raw.get("platform"), step=int(raw.get("step", 0) or 0),
                           config_inferred=inferred, extra=extra)


def _load_part(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    expected = module.state_dict()
    if "embedding.weight" in sd and "embedding" not in sd:
        sd = {("embedding" if k == "embedding.weight" else k): v for k, v in sd.items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise LatentVLAError(f"{where}: state dict does not match the tokenizer layout; missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]}")
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        raise LatentVLAError(f"{where}: tensor shapes do not match the config: {'; '.join(wrong[:4])}")
    module.load_state_dict(sd)
