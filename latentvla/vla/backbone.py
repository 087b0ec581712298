"""Qwen3-VL backbone: loading, new special tokens with trainable rows, LoRA.

- `load_backbone(cfg, device)` loads `Qwen3VLForConditionalGeneration` from `cfg.vlm_path` (the
  real Qwen3-VL-2B-Instruct or a `latentvla tiny-vlm` dir, same code path), with
  flash_attention_2 on GPU when installed (else sdpa), bf16 weights on GPU / fp32 on CPU.
- New tokens (`<|action_query|>`, `<|latent_query|>`, `<ACT_i>`, `<LA_i>`) are added to the
  tokenizer as special tokens; the vocabulary is extended by `NewTokenEmbedding`, which keeps the
  original table frozen and owns trainable rows for the new ids, initialised to the mean of the
  existing rows (input embedding AND output rows; the output rows are what code prediction
  uses — the full lm_head is never applied).
- LoRA via peft on `cfg.lora_target_modules` (rank 0 = none); everything else frozen.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latentvla.errors import LatentVLAError
from latentvla.vla.configuration_vla import VLAConfig

ACTION_QUERY = "<|action_query|>"
LATENT_QUERY = "<|latent_query|>"


def act_token(i: int) -> str:
    return f"<ACT_{i}>"


def la_token(i: int) -> str:
    return f"<LA_{i}>"


@dataclass(frozen=True)
class SpecialTokenIds:
    action_query: int
    latent_query: int
    act: tuple[int, ...]  # <ACT_0..K-1>
    la: tuple[int, ...]  # <LA_0..M-1>
    first_new: int  # first id of the new rows
    num_new: int
    image_pad: int
    vision_start: int
    vision_end: int
    im_start: int
    im_end: int
    pad: int


def add_special_tokens(tokenizer, cfg: VLAConfig) -> SpecialTokenIds:
    """Add our tokens (idempotent) and return their ids; they must be contiguous."""
    new = [ACTION_QUERY, LATENT_QUERY] + [act_token(i) for i in range(cfg.latent_codebook_size)] + \
          [la_token(i) for i in range(cfg.codebook_size)]
    tokenizer.add_tokens(new, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(new)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise LatentVLAError("tokenizer: the VLA special tokens did not receive contiguous ids "
                             "(the backbone tokenizer already holds some of them with other ids)")

    def one(tok: str) -> int:
        i = tokenizer.convert_tokens_to_ids(tok)
        if i is None or i == tokenizer.unk_token_id:
            raise LatentVLAError(f"tokenizer: the Qwen special token {tok} is missing (not a Qwen3-VL tokenizer?)")
        return int(i)

    k = cfg.latent_codebook_size
    return SpecialTokenIds(
        action_query=ids[0], latent_query=ids[1], act=tuple(ids[2:2 + k]), la=tuple(ids[2 + k:]),
        first_new=ids[0], num_new=len(ids),
        image_pad=one("<|image_pad|>"), vision_start=one("<|vision_start|>"), vision_end=one("<|vision_end|>"),
        im_start=one("<|im_start|>"), im_end=one("<|im_end|>"), pad=one("<|endoftext|>"),
    )


class NewTokenEmbedding(nn.Module):
    """Input embedding extended with trainable rows for ids in [first_new, first_new + n)."""

    def __init__(self, base: nn.Embedding, first_new: int, num_new: int, output_weight: torch.Tensor):
        super().__init__()
        self.base = base
        self.first_new, self.num_new = first_new, num_new
        n_old = min(first_new, base.weight.shape[0])
        with torch.no_grad():
            emb_mean = base.weight[:n_old].float().mean(0)
            out_mean = output_weight[:n_old].float().mean(0)
        # Mean of the existing rows: a neutral start the model has seen statistics of.
        self.new_rows = nn.Parameter(emb_mean.expand(num_new, -1).clone())
        self.new_output_rows = nn.Parameter(out_mean.expand(num_new, -1).clone())

    @property
    def weight(self) -> torch.Tensor:  # transformers reads .weight for dtype/device
        return self.base.weight

    num_embeddings = property(lambda self: self.first_new + self.num_new)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rel = ids - self.first_new
        is_new = (rel >= 0) & (rel < self.num_new)
        out = self.base(torch.where(is_new, torch.zeros_like(ids), ids))
        new = F.embedding(rel.clamp(0, self.num_new - 1), self.new_rows).to(out.dtype)
        return torch.where(is_new.unsqueeze(-1), new, out)

    def output_rows(self, ids: torch.Tensor | list[int]) -> torch.Tensor:
        """Output-matrix rows of new-token ids (used for code logits)."""
        ids = torch.as_tensor(ids, device=self.new_output_rows.device) - self.first_new
        return self.new_output_rows[ids]


def resolve_dtype(cfg: VLAConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def resolve_attn_implementation(cfg: VLAConfig, device: torch.device) -> str:
    if cfg.attn_implementation:
        if cfg.attn_implementation == "flash_attention_2" and (
                device.type != "cuda" or importlib.util.find_spec("flash_attn") is None):
            print("[latentvla] flash_attention_2 unavailable (needs CUDA + flash-attn); using sdpa")
            return "sdpa"
        return cfg.attn_implementation
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def check_vlm_dir(path: str) -> Path:
    if not path:
        raise LatentVLAError("vlm_path is empty: pass --vlm_path DIR (a local Qwen3-VL checkpoint directory)")
    p = Path(path)
    if not p.is_dir():
        raise LatentVLAError(f"vlm_path {p}: directory not found")
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        if not (p / name).is_file():
            raise LatentVLAError(f"vlm_path {p}: lacks {name} (expected a Qwen3-VL directory in Hugging Face layout)")
    return p


def load_backbone(cfg: VLAConfig, device: torch.device):
    """-> (Qwen3VLForConditionalGeneration with LoRA and new-token rows, tokenizer, SpecialTokenIds)."""
    import transformers
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    from latentvla.utils.weight_files import check_safetensors_dir

    path = check_vlm_dir(cfg.vlm_path)
    check_safetensors_dir(path, f"vlm_path {path}", "download or copy the backbone again")  # names a truncated file
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    attn = resolve_attn_implementation(cfg, device)
    try:
        try:
            model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=resolve_dtype(cfg, device),
                                                                    attn_implementation=attn)
        except (ImportError, ValueError) as e:
            if attn != "flash_attention_2":
                raise
            print(f"[latentvla] flash_attention_2 failed to load ({e}); falling back to sdpa")
            model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=resolve_dtype(cfg, device),
                                                                    attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise LatentVLAError(f"vlm_path {path}: cannot load a Qwen3-VL model ({type(e).__name__}: {e})") from None
    model.config.use_cache = False
    ids = add_special_tokens(tokenizer, cfg)

    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.lora_rank > 0:
        from peft import LoraConfig, inject_adapter_in_model

        lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), bias="none")
        try:
            # LoRA layers only in the language model (vision tower and merger stay frozen).
            inject_adapter_in_model(lcfg, model.model.language_model)
        except ValueError as e:
            raise LatentVLAError(f"lora_target_modules {cfg.lora_target_modules}: {e}") from None
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(True)

    lm = model.model.language_model
    out_w = model.lm_head.weight
    ext = NewTokenEmbedding(lm.embed_tokens, ids.first_new, ids.num_new, out_w).to(device)
    lm.embed_tokens = ext
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device), tokenizer, ids
