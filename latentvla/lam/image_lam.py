"""UniVLA-style image latent action model.

A VQ-VAE in frozen DINOv2 feature space. Module names mirror the layout of UniVLA's checkpoints,
so loading one is a prefix strip:

- `action_latent_controllable` / `action_latent`: the 4 task-centric / 4 task-irrelevant queries;
  each frame's token row is [task-centric queries | task-irrelevant queries | patches].
- `encoder`: input projection `ffn` (LayerNorm → Linear → LayerNorm) + 1-D sinusoidal positions +
  `transformer_blocks` (pre-norm: spatial attention, causal temporal attention, MLP).
- `to_codebook` → `vq_action` (task-centric, trainable), `to_codebook_uncontrol` → `vq`
  (task-irrelevant, frozen in stage 2). "uncontrol" names the task-irrelevant branch throughout.
- `decoder` over [action_up(task-centric) | action_up_uncontrol(task-irrelevant) | patch_up(frame t)]
  predicts frame t+k's DINO patch features (`decoder.out`).
- `action_decoder`: MLP (E → E → ReLU → k·D) regressing the pair's normalized action chunk from the
  mean task-centric code (stage 2 auxiliary loss).

Stage 1 has only the task-irrelevant branch and appends projected T5 tokens (`lang_proj`) to every
spatial attention (encoder and decoder), with padding masked.

The DINO backbone (`dino_encoder`, see `latentvla.lam.dino`) is frozen and kept in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from latentvla.lam.configuration_image_lam import ImageLAMConfig


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention; bias-free q/k/v, `to_out.0` output projection (UniVLA layout)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: bool = False, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        mask = None
        if key_mask is not None:  # [b, n] True = attend
            mask = key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


def _mlp(dim: int, dropout: float) -> nn.Sequential:
    # indices 0 and 3 hold the weights (UniVLA layout `ffn.0`, `ffn.3`)
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))


def _in_proj(in_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim), nn.LayerNorm(dim))


class TransformerBlock(nn.Module):
    """Pre-norm spatial attention, then (`temporal`) causal attention over time, then the MLP."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, temporal: bool = True):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(dim)
        self.spatial_attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        if temporal:  # the MLP's norm is then norm3 (UniVLA's names)
            self.temporal_attn = Attention(dim, heads, dropout)
            self.norm3 = nn.LayerNorm(dim)
        self.ffn = _mlp(dim, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, s, d = x.shape
        h = x.reshape(b * t, s, d)
        h = h + self.spatial_attn(self.norm1(h), key_mask=key_mask)
        if not self.temporal:
            h = h.view(b, t, s, d)
            return h + self.ffn(self.norm2(h))
        h = h.view(b, t, s, d).transpose(1, 2).reshape(b * s, t, d)
        h = h + self.temporal_attn(self.norm2(h), causal=True)
        h = h.view(b, s, t, d).transpose(1, 2)
        return h + self.ffn(self.norm3(h))


class LatentTransformer(nn.Module):
    """Input projection + 1-D sinusoidal positions along the token axis + blocks over [B, T, S, in_dim]
    token grids, language tokens appended to every frame's row. The encoder's blocks also attend over
    time; the decoder's are spatial and end in `out` (predicted DINO features)."""

    def __init__(self, in_dim: int, dim: int, blocks: int, heads: int, dropout: float = 0.0, temporal: bool = True,
                 out_dim: int | None = None):
        super().__init__()
        self.ffn = _in_proj(in_dim, dim)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout, temporal) for _ in range(blocks))
        self.out = nn.Linear(dim, out_dim) if out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, lang: torch.Tensor | None = None, lang_mask: torch.Tensor | None = None):
        x = self.ffn(x)
        s = x.shape[2]
        x = x + sinusoidal_positions(s, x.shape[-1], x.device, x.dtype)
        x, key_mask = _append_language(x, lang, lang_mask)
        for block in self.transformer_blocks:
            x = block(x, key_mask)
        return self.out(x[:, :, :s])


def _append_language(x, lang, lang_mask):
    """Append language tokens [B, L, D] to every frame's row; key mask repeated per frame."""
    if lang is None:
        return x, None
    b, t, s, _ = x.shape
    x = torch.cat([x, lang[:, None].expand(b, t, *lang.shape[1:]).to(x.dtype)], dim=2)
    mask = torch.cat([torch.ones(b, s, dtype=torch.bool, device=x.device), lang_mask.bool()], dim=1)
    return x, mask.repeat_interleave(t, dim=0)


class VectorQuantizer(nn.Module):
    """Nearest-code quantization with a straight-through estimator (`codebook.weight` [K, E])."""

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.codebook = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / num_codes, 1.0 / num_codes)

    def forward(self, z: torch.Tensor):
        flat = z.reshape(-1, z.shape[-1]).float()
        codes = self.codebook.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None]
        idx = dist.argmin(dim=1).view(z.shape[:-1])
        q = self.codebook(idx).to(z.dtype)
        return z + (q - z).detach(), q, idx


class ImageLatentActionModel(nn.Module):
    def __init__(self, cfg: ImageLAMConfig, dino: nn.Module | None = None, text_encoder: nn.Module | None = None):
        super().__init__()
        cfg.validate()
        self.config = cfg
        d, e, n = cfg.model_dim, cfg.latent_dim, cfg.num_codes
        self.dino_encoder = dino
        self.action_latent = nn.Parameter(torch.empty(1, 1, n, cfg.dino_dim).uniform_(-1, 1))
        self.encoder = LatentTransformer(cfg.dino_dim, d, cfg.enc_blocks, cfg.num_heads, cfg.dropout)
        self.to_codebook_uncontrol = nn.Linear(d, e)
        self.vq = VectorQuantizer(cfg.codebook_size, e)
        self.patch_up = nn.Linear(cfg.dino_dim, d)
        self.action_up_uncontrol = nn.Linear(e, d)
        self.decoder = LatentTransformer(d, d, cfg.dec_blocks, cfg.num_heads, cfg.dropout, temporal=False,
                                         out_dim=cfg.dino_dim)
        if cfg.stage == 2:
            self.action_latent_controllable = nn.Parameter(torch.empty(1, 1, n, cfg.dino_dim).uniform_(-1, 1))
            self.to_codebook = nn.Linear(d, e)
            self.vq_action = VectorQuantizer(cfg.codebook_size, e)
            self.action_up = nn.Linear(e, d)
            if cfg.action_dim > 0:
                self.action_decoder = nn.Sequential(nn.Linear(e, e), nn.ReLU(),
                                                    nn.Linear(e, cfg.pair_offset * cfg.action_dim))
            self.vq.requires_grad_(False)  # the task-irrelevant codebook is frozen in stage 2
        else:
            self.text_encoder = text_encoder
            self.lang_proj = nn.Linear(cfg.text_dim, d)

    # ------------------------------------------------------------------ parts
    trainable_codebook = property(lambda self: self.vq_action if self.config.stage == 2 else self.vq)

    def lam_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the LAM itself (frozen DINO / T5 backbones excluded)."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(("dino_encoder.", "text_encoder."))}

    def dino_features(self, frames: torch.Tensor) -> torch.Tensor:
        """frames float [N, 3, H, W] in [0, 1] → DINO patch tokens [N, P, dino_dim] (fp32, no grad)."""
        if self.dino_encoder is None:
            raise RuntimeError("this LAM has no DINO backbone attached")
        with torch.autocast(device_type=frames.device.type, enabled=False):
            return self.dino_encoder(frames.float())

    def encode_text(self, instructions: list[str]):
        te = self.text_encoder
        if te is None:
            raise RuntimeError("stage 1 needs a text encoder (T5)")
        return te(instructions)

    # ------------------------------------------------------------------ forward
    def quantize(self, feats: torch.Tensor, lang=None, lang_mask=None) -> dict:
        """feats [B, 2, P, dino_dim] (frames t, t+k) → codes of the transition."""
        b = feats.shape[0]
        n = self.config.num_codes
        queries = [self.action_latent.expand(b, 2, -1, -1)]
        if self.config.stage == 2:
            queries.insert(0, self.action_latent_controllable.expand(b, 2, -1, -1))
        tokens = torch.cat([*(q.to(feats.dtype) for q in queries), feats], dim=2)
        z = self.encoder(tokens, lang, lang_mask)[:, 1]  # only frame t+k's queries have seen both frames
        out = {}
        off = 0
        if self.config.stage == 2:
            ze = self.to_codebook(z[:, :n])
            zq, q, idx = self.vq_action(ze)
            out.update(z_e=ze, z_q=zq, codes=q, indices=idx)
            off = n
        ze_u = self.to_codebook_uncontrol(z[:, off:off + n])
        zq_u, q_u, idx_u = self.vq(ze_u)
        out.update(z_e_uncontrol=ze_u, z_q_uncontrol=zq_u, codes_uncontrol=q_u, indices_uncontrol=idx_u)
        return out

    def decode(self, feats_t: torch.Tensor, out: dict, lang=None, lang_mask=None) -> torch.Tensor:
        parts = []
        if self.config.stage == 2:
            parts.append(self.action_up(out["z_q"]))
        parts.append(self.action_up_uncontrol(out["z_q_uncontrol"]))
        parts.append(self.patch_up(feats_t))
        x = torch.cat(parts, dim=1)[:, None]  # [B, 1, S, D]
        return self.decoder(x, lang, lang_mask)[:, 0, -feats_t.shape[1]:]

    def forward(self, frames: torch.Tensor, instructions: list[str] | None = None,
                action_select: torch.Tensor | None = None) -> dict:
        """frames float [B, 2, 3, H, W] in [0, 1] → codes, reconstruction and its target.

        `action_select` (indices into the batch): also regress those pairs' action chunks from the mean
        task-centric code (`out["action_pred"]` [n, k·D]); inside forward so DDP sees the head used.
        """
        b = frames.shape[0]
        feats = self.dino_features(frames.flatten(0, 1)).view(b, 2, -1, self.config.dino_dim)
        return self.forward_features(feats, instructions, action_select)

    def forward_features(self, feats: torch.Tensor, instructions: list[str] | None = None,
                         action_select: torch.Tensor | None = None) -> dict:
        lang = lang_mask = None
        if self.config.stage == 1:
            lang, lang_mask = self.encode_text(list(instructions or [""] * feats.shape[0]))
            lang = self.lang_proj(lang.to(self.lang_proj.weight.dtype))
        wdtype = self.patch_up.weight.dtype
        feats_in = feats.to(wdtype) if not torch.is_autocast_enabled() else feats
        out = self.quantize(feats_in, lang, lang_mask)
        out["recon"] = self.decode(feats_in[:, 0], out, lang, lang_mask)
        out["target"] = feats[:, 1]
        head = getattr(self, "action_decoder", None)
        if action_select is not None and head is not None:
            out["action_select"] = action_select
            out["action_pred"] = head(out["z_q"][action_select].mean(dim=1))
        return out

    @torch.no_grad()
    def encode_latent_actions(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DINO features of pairs [B, 2, P, dino_dim] → (indices int64 [B, C], code vectors fp32 [B, C, E])."""
        out = self.quantize(feats)
        if self.config.stage == 2:
            idx, book = out["indices"], self.vq_action
        else:
            idx, book = out["indices_uncontrol"], self.vq
        return idx.long(), book.codebook.weight.detach().float()[idx]


class T5TextEncoder(nn.Module):
    """Frozen T5 encoder + tokenizer from a local directory (stage 1): list[str] → ([B, L, H], mask)."""

    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoTokenizer, T5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = T5EncoderModel.from_pretrained(path, dtype=torch.float32)
        self.hidden_size = int(self.model.config.d_model)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> T5TextEncoder:
        return super().train(False)

    @torch.no_grad()
    def forward(self, texts: list[str]):
        dev = next(self.model.parameters()).device
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        with torch.autocast(device_type=dev.type, enabled=False):
            h = self.model(input_ids=enc["input_ids"].to(dev),
                           attention_mask=enc["attention_mask"].to(dev)).last_hidden_state
        return h, enc["attention_mask"].to(dev)
