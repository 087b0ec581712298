"""The action head shared by all variants and the proprio projector.

One `HeadBlock` per used LLM layer. Block i: the chunk queries (learned per-step embeddings,
width head_dim) attend over [themselves; action-query states of layer i + proprio token] and,
in a second attention gated by tanh(g) (g = 0 at init), over the image-token states of layer i
(padding masked). Then a residual MLP. Final LayerNorm -> Linear(head_dim -> D).
With `use_pro_version`, queries and keys of the chunk/action-query streams are rotated by their
chunk step (rotary positions; <R(m)q, R(n)k> depends only on m - n). The proprio token and the
image tokens carry no position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotary_cos_sin(positions: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [..., N] -> cos, sin [..., N, dim] (pairs (i, i + dim/2) share a frequency)."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    ang = positions.float().unsqueeze(-1) * inv  # [..., N, dim/2]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rotary(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, N, dim] by positions [N] (or [B, N]); a proper 2-D rotation per pair."""
    dim = x.shape[-1]
    cos, sin = rotary_cos_sin(positions, dim)
    if cos.ndim == 3:  # [B, N, dim] -> broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class ProprioProjector(nn.Module):
    """Linear(proprio_dim -> H) -> GELU -> Linear(H -> H): one proprio token."""

    def __init__(self, proprio_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(proprio_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.net(proprio).unsqueeze(1)  # [B, 1, H]


class HeadBlock(nn.Module):
    def __init__(self, head_dim: int, llm_dim: int, num_heads: int, rotary: bool, mlp_ratio: int = 4):
        super().__init__()
        if head_dim % num_heads or (head_dim // num_heads) % 2:
            raise ValueError(f"action head width {head_dim} must split into {num_heads} heads of even size")
        self.num_heads, self.rotary = num_heads, rotary
        self.norm_x = nn.LayerNorm(head_dim)
        self.norm_cond = nn.LayerNorm(llm_dim)
        self.norm_img = nn.LayerNorm(llm_dim)
        self.q = nn.Linear(head_dim, head_dim)
        self.kv_self = nn.Linear(head_dim, 2 * head_dim)
        self.kv_cond = nn.Linear(llm_dim, 2 * head_dim)
        self.kv_img = nn.Linear(llm_dim, 2 * head_dim)
        self.image_gate = nn.Parameter(torch.zeros(1))
        self.out = nn.Linear(head_dim, head_dim)
        self.norm_mlp = nn.LayerNorm(head_dim)
        self.mlp = nn.Sequential(nn.Linear(head_dim, mlp_ratio * head_dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * head_dim, head_dim))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        return x.view(B, N, self.num_heads, D // self.num_heads).transpose(1, 2)

    def forward(self, x, cond, cond_mask, cond_pos, img, img_mask):
        """x [B,P,hd]; cond [B,Nc,H] + mask [B,Nc] + positions [Nc] (-1 = none); img [B,Ni,H] + mask."""
        B, P, _ = x.shape
        h = self.norm_x(x)
        q = self._heads(self.q(h))
        k_s, v_s = (self._heads(t) for t in self.kv_self(h).chunk(2, -1))
        k_c, v_c = (self._heads(t) for t in self.kv_cond(self.norm_cond(cond)).chunk(2, -1))
        k_i, v_i = (self._heads(t) for t in self.kv_img(self.norm_img(img)).chunk(2, -1))
        if self.rotary:
            steps = torch.arange(P, device=x.device)
            q, k_s = apply_rotary(q, steps), apply_rotary(k_s, steps)
            has_pos = (cond_pos >= 0).view(1, 1, -1, 1)
            k_c = torch.where(has_pos, apply_rotary(k_c, cond_pos.clamp(min=0)), k_c)
        keys = torch.cat([k_s, k_c], 2)
        vals = torch.cat([v_s, v_c], 2)
        mask = torch.cat([torch.ones(B, P, dtype=torch.bool, device=x.device), cond_mask], 1)[:, None, None, :]
        main = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
        image = F.scaled_dot_product_attention(q, k_i, v_i, attn_mask=img_mask[:, None, None, :])
        att = main + torch.tanh(self.image_gate).to(main.dtype) * image
        x = x + self.out(att.transpose(1, 2).reshape(B, P, -1))
        return x + self.mlp(self.norm_mlp(x))


class ActionHead(nn.Module):
    def __init__(self, num_blocks: int, llm_dim: int, head_dim: int, num_heads: int, chunk_len: int,
                 action_dim: int, rotary: bool = False, mlp_ratio: int = 4):
        super().__init__()
        self.chunk_queries = nn.Parameter(torch.randn(chunk_len, head_dim) * 0.02)  # per-step, learned
        self.blocks = nn.ModuleList(HeadBlock(head_dim, llm_dim, num_heads, rotary, mlp_ratio)
                                    for _ in range(num_blocks))
        self.norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(head_dim, action_dim)
        # Output layer at std 1/width (not PyTorch's ~1/sqrt(width)): Adam moves every upstream weight
        # by ~lr whatever its gradient, shifting the normalized features coherently, and the output
        # moves by that shift times |w| x width: width-independent with 1/width, x sqrt(width) with the
        # default (at width 2048 one step took the L1 from 0.5 to 6; docs/benchmarks.md).
        nn.init.normal_(self.proj.weight, std=1.0 / head_dim)
        nn.init.zeros_(self.proj.bias)

    def forward(self, query_states: list[torch.Tensor], image_states: list[torch.Tensor], image_mask: torch.Tensor,
                proprio_token: torch.Tensor | None) -> torch.Tensor:
        """query_states / image_states: one [B, P, H] / [B, Ni, H] per block -> actions [B, P, D]."""
        B, P = query_states[0].shape[:2]
        x = self.chunk_queries.unsqueeze(0).expand(B, -1, -1).to(query_states[0].dtype)
        pos = torch.arange(P, device=x.device)
        cond_mask = torch.ones(B, P, dtype=torch.bool, device=x.device)
        if proprio_token is not None:
            pos = torch.cat([pos, pos.new_full((1,), -1)])
            cond_mask = torch.cat([cond_mask, cond_mask[:, :1]], 1)
        for block, qs, im in zip(self.blocks, query_states, image_states, strict=False):
            cond = qs if proprio_token is None else torch.cat([qs, proprio_token.to(qs.dtype)], 1)
            x = block(x, cond, cond_mask, pos, im, image_mask)
        return self.proj(self.norm(x))
