"""VQ action-chunk tokenizer: one discrete code per action step of a normalized chunk.

Modules (their state-dict layout is the paper's, so its `tokenizer_step_N.pt` files load):
- `ActionChunkEncoder`: [x, Re FFT_t(x), Im FFT_t(x)] -> `in_proj` -> `conv1..conv3` (dilations
  1, 2, 4, ReLU) -> 2-layer `transformer` -> [B, P, H].
- `EMAVectorQuantizer`: `embedding` [M, H] parameter, EMA buffers `cluster_size` [M], `ema_w` [M, H].
  Reachable initialisation (codes start on the encoder-output shell, or from data with
  `init_from_data`; the EMA buffers start consistent with the codes so unused codes do not drift
  away) and `restart_dead_codes`.
- `ActionChunkDecoder`: per-step MLP `net.0` (H->256) ReLU `net.2` (256->D).
- `ActionTokenizerModel`: the three plus the training loss (reconstruction + masked re-encoding +
  commitment).

Public API: `ActionChunkTokenizer.from_checkpoint(path, device="cpu")`, `.encode(actions [B,P,D]
normalized) -> LongTensor [B,P]`, `.decode(codes [B,P]) -> FloatTensor [B,P,D]`, `.codebook_size`,
`.action_dim`, `.chunk_len`, `.statistics`, `.platform_name`, `.check_platform(platform)`.
Checkpoint I/O lives in `action_tokenizer_checkpoint.py`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig


class ActionChunkEncoder(nn.Module):
    def __init__(self, cfg: ActionTokenizerConfig):
        super().__init__()
        h = cfg.hidden_dim
        self.fft_norm = cfg.fft_norm
        self.in_proj = nn.Linear(3 * cfg.action_dim, h)
        d1, d2, d3 = cfg.dilations
        self.conv1 = nn.Conv1d(h, h, 3, dilation=d1, padding=d1)
        self.conv2 = nn.Conv1d(h, h, 3, dilation=d2, padding=d2)
        self.conv3 = nn.Conv1d(h, h, 3, dilation=d3, padding=d3)
        layer = nn.TransformerEncoderLayer(h, cfg.num_heads, cfg.ffn_dim, dropout=cfg.dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        """[B, P, D] normalized actions -> [B, P, H] one latent per step."""
        spec = torch.fft.fft(actions.float(), dim=1, norm=self.fft_norm)
        x = self.in_proj(torch.cat([actions, spec.real, spec.imag], dim=-1))
        x = x.transpose(1, 2)  # Conv1d wants [B, H, P]
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu(conv(x))
        return self.transformer(x.transpose(1, 2))


class ActionChunkDecoder(nn.Module):
    def __init__(self, cfg: ActionTokenizerConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.decoder_hidden_dim), nn.ReLU(),
                                 nn.Linear(cfg.decoder_hidden_dim, cfg.action_dim))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


class EMAVectorQuantizer(nn.Module):
    """Nearest-code (L2) quantizer whose codebook follows an EMA of the vectors assigned to it."""

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.dim, self.decay, self.eps = codebook_size, dim, decay, eps
        # The encoder ends in a LayerNorm, so its outputs lie near the shell |z| ~ sqrt(dim) with
        # zero mean per vector: start every code there so each one can win some input.
        init = torch.randn(codebook_size, dim)
        init = (init - init.mean(1, keepdim=True)) / init.std(1, keepdim=True)
        self.embedding = nn.Parameter(init, requires_grad=False)
        # cluster_size = 1 and ema_w = embedding: the EMA ratio ema_w / cluster_size equals the code
        # and stays so while a code is unused (both decay alike), instead of blowing up.
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("ema_w", init.clone())
        # Assignments since the last dead-code restart (not saved: the paper's layout has 3 keys).
        self.register_buffer("usage", torch.zeros(codebook_size), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Accept an nn.Embedding-style key as well.
        if prefix + "embedding.weight" in state_dict and prefix + "embedding" not in state_dict:
            state_dict[prefix + "embedding"] = state_dict.pop(prefix + "embedding.weight")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [...] index of the nearest code (L2)."""
        flat = z.reshape(-1, self.dim).float()
        emb = self.embedding.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ emb.t() + emb.pow(2).sum(1)[None]
        return dist.argmin(1).reshape(z.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embedding)

    def forward(self, z: torch.Tensor, update: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (straight-through quantized z, codes, commitment loss). In training mode with
        `update`, the codebook moves by EMA towards the vectors assigned to each code."""
        codes = self.nearest(z)
        q = self.lookup(codes).to(z.dtype)
        if self.training and update:
            self._ema_update(z.detach().reshape(-1, self.dim).float(), codes.reshape(-1))
        commitment = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), codes, commitment

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        sums = torch.zeros_like(self.ema_w).index_add_(0, codes, flat)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            # DDP: one update over the global batch, so the codebook stays the same on every rank
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.usage += counts
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_w.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.data.copy_(self.ema_w / smoothed[:, None])

    @torch.no_grad()
    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor, weight: float) -> None:
        which = which.to(self.embedding.device)
        vectors = vectors.to(self.embedding.device, self.embedding.dtype)
        self.embedding.data[which] = vectors
        self.ema_w[which] = vectors * weight
        self.cluster_size[which] = weight

    def _sample(self, z: torch.Tensor, count: int, generator: torch.Generator | None, replace: bool) -> torch.Tensor:
        """`count` rows of z (any device) plus 1% noise; random numbers drawn on CPU (seeded)."""
        flat = z.detach().reshape(-1, self.dim).float().cpu()
        n = flat.shape[0]
        if n == 0:
            raise ValueError("no encoder outputs to sample codes from")
        if replace:
            pick = torch.randint(n, (count,), generator=generator)
        else:
            pick = torch.randperm(n, generator=generator)[:count]
        noise = torch.randn(count, self.dim, generator=generator) * 0.01 * flat.std().clamp(min=1e-6)
        return flat[pick] + noise

    @torch.no_grad()
    def init_from_data(self, z: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set every code to an encoder output (plus a little noise): all codes start where the data
        is. Sampled with replacement when there are fewer vectors than codes."""
        n = z.numel() // self.dim
        vectors = self._sample(z, self.codebook_size, generator, replace=n < self.codebook_size)
        self._set_codes(torch.arange(self.codebook_size), vectors, max(n / self.codebook_size, 1e-3))
        self.usage.zero_()

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, min_usage: float = 1.0,
                           generator: torch.Generator | None = None) -> int:
        """Move codes assigned fewer than `min_usage` times since the last call onto random encoder
        outputs of `z`; returns how many moved. Resets the usage window."""
        dead = (self.usage < min_usage).nonzero().flatten()
        self.usage.zero_()
        if dead.numel() == 0:
            return 0
        live = self.cluster_size[self.cluster_size > self.eps]
        weight = float(live.mean()) if live.numel() else 1.0
        self._set_codes(dead, self._sample(z, dead.numel(), generator, replace=True), weight)
        return int(dead.numel())


class ActionTokenizerModel(nn.Module):
    """Encoder + EMA VQ + decoder, with the paper's training loss (reconstruction + masked
    re-encoding + commitment)."""

    def __init__(self, cfg: ActionTokenizerConfig):
        super().__init__()
        self.config = cfg.validate()
        self.encoder = ActionChunkEncoder(cfg)
        self.vq = EMAVectorQuantizer(cfg.codebook_size, cfg.hidden_dim, cfg.ema_decay, cfg.ema_eps)
        self.decoder = ActionChunkDecoder(cfg)

    def forward(self, actions: torch.Tensor, mask_ratio: float = 0.15, commitment_weight: float = 0.25,
                mask_loss_weight: float = 1.0, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Loss = MSE(recon, x) + w_m * masked re-encoding MSE + w_c * commitment.

        Masked re-encoding: a random `mask_ratio` of the encoder outputs is zeroed, that copy is
        quantized (without codebook update) and decoded, the result is encoded again and must match
        the original encoder outputs at the masked steps (the rest of the chunk has to carry them).
        """
        z = self.encoder(actions)
        q, codes, commitment = self.vq(z)
        recon = self.decoder(q)
        rec_loss = F.mse_loss(recon, actions)
        loss = rec_loss + commitment_weight * commitment
        mask_loss = torch.zeros((), device=actions.device)
        if mask_ratio > 0 and mask_loss_weight > 0:
            b, p = z.shape[:2]
            mask = torch.rand(b, p, generator=generator).to(z.device) < mask_ratio
            if mask.any():
                q_m, _, _ = self.vq(z.masked_fill(mask[..., None], 0.0), update=False)
                z_re = self.encoder(self.decoder(q_m))
                mask_loss = F.mse_loss(z_re[mask], z.detach()[mask])
                loss = loss + mask_loss_weight * mask_loss
        return {"loss": loss, "recon": recon, "codes": codes, "latents": z, "rec_loss": rec_loss.detach(),
                "mask_loss": mask_loss.detach(), "commitment": commitment.detach()}


def code_usage_stats(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of codes used, perplexity) of a set of assignments."""
    counts = torch.bincount(codes.reshape(-1).cpu(), minlength=codebook_size).double()
    probs = counts / counts.sum().clamp(min=1)
    nz = probs[probs > 0]
    perplexity = math.exp(float(-(nz * nz.log()).sum()))
    return float((counts > 0).float().mean()), perplexity


def check_shape(cfg: ActionTokenizerConfig, chunk_len: int, action_dim: int, source: str, where: str) -> None:
    if action_dim != cfg.action_dim:
        raise LatentVLAError(f"{source}: tokenizer expects action_dim {cfg.action_dim}, {where} has {action_dim}")
    if cfg.chunk_len is not None and chunk_len != cfg.chunk_len:
        raise LatentVLAError(f"{source}: tokenizer expects chunk length {cfg.chunk_len}, {where} has {chunk_len}")


def check_platform(cfg: ActionTokenizerConfig, trained_on: dict | None, platform: Any, source: str, where: str) -> None:
    """Error unless `platform` (Platform or dict) fits a tokenizer of config `cfg` trained on platform
    dict `trained_on` (None = unknown, e.g. the paper's files): same name when known, same dims."""
    d = platform.to_dict() if hasattr(platform, "to_dict") else dict(platform)
    name = None if trained_on is None else trained_on.get("name")
    if name is not None and d.get("name") != name:
        raise LatentVLAError(f"{source}: tokenizer was trained on platform {name!r} but {where} is platform "
                             f"{d.get('name')!r}; train a tokenizer on that platform's data")
    check_shape(cfg, int(d["chunk_len"]), int(d["action_dim"]), source, where)


class ActionChunkTokenizer:
    """Frozen tokenizer for use by la_tok and analysis (always eval mode, no grad)."""

    def __init__(self, model: ActionTokenizerModel, statistics: dict | None = None, platform: dict | None = None,
                 source: str = "action tokenizer"):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.statistics = statistics or {}
        self.platform = platform  # platform dict the checkpoint was trained on (None: unknown)
        self.source = source

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> ActionChunkTokenizer:
        from latentvla.lam.action_tokenizer_checkpoint import load_tokenizer_checkpoint

        ckpt = load_tokenizer_checkpoint(path, map_location="cpu")
        model = ckpt.model.to(device)
        return cls(model, ckpt.statistics, ckpt.platform, source=str(path))

    # -- properties
    config = property(lambda self: self.model.config)
    codebook_size = property(lambda self: self.model.config.codebook_size)
    action_dim = property(lambda self: self.model.config.action_dim)
    chunk_len = property(lambda self: self.model.config.chunk_len)
    platform_name = property(lambda self: None if self.platform is None else self.platform.get("name"))
    device = property(lambda self: self.model.vq.embedding.device)

    def to(self, device) -> ActionChunkTokenizer:
        self.model.to(device)
        return self

    # -- checks
    def check_platform(self, platform: Any, where: str = "data") -> None:
        """Error unless `platform` (a `latentvla.robots.Platform` or its dict) matches the checkpoint:
        same action dim and chunk length, and the same platform name when the checkpoint records one."""
        check_platform(self.config, self.platform, platform, self.source, where)

    # -- encode / decode
    def _as_tensor(self, x, dtype) -> torch.Tensor:
        return x.to(self.device, dtype) if torch.is_tensor(x) else torch.as_tensor(x, dtype=dtype, device=self.device)

    @torch.no_grad()
    def encode(self, actions) -> torch.Tensor:
        """Normalized actions [B, P, D] (or [P, D]) -> LongTensor codes [B, P] (or [P]), on this device."""
        x = self._as_tensor(actions, torch.float32)
        single = x.dim() == 2
        if single:
            x = x[None]
        if x.dim() != 3:
            raise LatentVLAError(f"{self.source}: encode expects actions [B, P, D], got shape {tuple(x.shape)}")
        check_shape(self.config, x.shape[1], x.shape[2], self.source, "the actions")
        if not torch.isfinite(x).all():
            raise LatentVLAError(f"{self.source}: encode got NaN/inf actions")
        # fp32 regardless of a caller's autocast (la_tok trains under bf16 autocast): the codes must
        # be the ones the tokenizer was trained to produce.
        with torch.autocast(device_type=x.device.type, enabled=False):
            codes = self.model.vq.nearest(self.model.encoder(x))
        return codes[0] if single else codes

    @torch.no_grad()
    def decode(self, codes) -> torch.Tensor:
        """Codes [B, P] (or [P]) -> normalized actions [B, P, D] (or [P, D]), float32."""
        c = self._as_tensor(codes, torch.long)
        if c.dim() not in (1, 2):
            raise LatentVLAError(f"{self.source}: decode expects codes [B, P], got shape {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.codebook_size):
            raise LatentVLAError(f"{self.source}: codes must be in [0, {self.codebook_size}), got range "
                                 f"[{int(c.min())}, {int(c.max())}]")
        with torch.autocast(device_type=c.device.type, enabled=False):
            return self.model.decoder(self.model.vq.lookup(c)).float()
