"""The latent-supervision variants as small pluggable strategies (docs/architecture.md §5).

A strategy decides (1) the query slots appended to the prompt, (2) which slot states the action
head reads (one [B, P, H] per head layer) and (3) its auxiliary loss + metrics, and declares what
training must provide (sample keys, options, a frozen helper model). Everything else is shared in
`LatentVLA`. Adding a variant = one subclass registered with `@register_strategy("name")` into
`configuration_vla.STRATEGIES`, which the model, `latentvla train` and the demo read.

Code prediction (la_direct, la_cond, la_tok) multiplies the final-layer states AT THE CODE SLOTS
by the output rows of the code tokens only: [B, n_slots, K] logits, never full-vocabulary logits.
Each code is predicted at its own slot (no causal-LM shift).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentvla.errors import LatentVLAError
from latentvla.vla.backbone import NewTokenEmbedding, SpecialTokenIds
from latentvla.vla.configuration_vla import STRATEGIES, strategy_class


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def deco(cls):
        cls.name = name
        STRATEGIES[name] = cls
        return cls
    return deco


@dataclass
class ForwardContext:
    """What a strategy sees of one forward pass."""

    batch: dict[str, torch.Tensor]
    hidden_states: tuple[torch.Tensor, ...]  # embeddings + one per LLM layer (last one normed)
    head_layer_indexes: list[int]  # indexes into hidden_states read by the head
    ids: SpecialTokenIds
    token_rows: NewTokenEmbedding
    helper: Any = None  # the strategy's frozen helper model (la_tok: the action tokenizer); None at inference
    _positions: dict = field(default_factory=dict)

    def positions(self, token_id: int, count: int) -> torch.Tensor:
        """[B, count] positions of `token_id` in each row (found by id; count checked)."""
        key = (token_id, count)
        if key not in self._positions:
            ids = self.batch["input_ids"]
            mask = ids == token_id
            found = mask.sum(1)
            if not bool((found == count).all()):
                raise LatentVLAError(f"query slots: expected {count} slot tokens per row, found {found.tolist()}")
            self._positions[key] = mask.nonzero()[:, 1].view(ids.shape[0], count)
        return self._positions[key]

    def gather(self, layer: int, token_id: int, count: int) -> torch.Tensor:
        h = self.hidden_states[layer]
        pos = self.positions(token_id, count)
        return h[torch.arange(h.shape[0], device=h.device).unsqueeze(1), pos]  # [B, count, H]

    def has_targets(self) -> bool:
        return "actions" in self.batch


def code_cross_entropy(ctx: ForwardContext, slot_token: int, vocab: tuple[int, ...], labels: torch.Tensor,
                       valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """CE of the codes at their own slots over the code vocabulary only. labels/valid: [B, n]."""
    n = labels.shape[1]
    states = ctx.gather(len(ctx.hidden_states) - 1, slot_token, n)  # final (normed) layer
    rows = ctx.token_rows.output_rows(list(vocab))  # [V, H]
    logits = states.float() @ rows.float().t()  # [B, n, V]
    if bool(((labels < 0) | (labels >= len(vocab))).any()):
        raise LatentVLAError(f"code labels outside [0, {len(vocab)}): got min {int(labels.min())}, max "
                             f"{int(labels.max())} (codebook size of the labels does not match the model's)")
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels.float())
    w = valid.float()
    denom = w.sum().clamp(min=1.0)
    # Top-1 correct only when the label's logit beats every other one: at init the new rows are equal, all
    # logits tie and argmax would "predict" code 0 (code_acc 1.0 on a collapsed LAM at chance-level CE).
    label_logit = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    best_other = logits.scatter(-1, labels.unsqueeze(-1), float("-inf")).amax(-1)
    acc = ((label_logit > best_other).float() * w).sum() / denom
    ce = (ce * w).sum() / denom
    return ce, {"ce": ce.detach(), "code_acc": acc.detach()}


class Strategy(nn.Module):
    name = "?"  # its vla_id, set by the registry
    required_sample_keys: tuple[str, ...] = ()  # per-step keys the data must carry (VLADataset extra_keys)
    options: tuple[str, ...] = ()  # config fields only variants like it read (set for another one: a note)
    # A frozen helper model: the option naming it; classmethod load_helper(cfg, platform) -> (model, VLAConfig values)
    helper_option: str | None = None
    predicts_codes = False  # False: the new tokens' output rows stay frozen (DDP needs every trainable param used)

    def __init__(self, cfg, ids: SpecialTokenIds, chunk_len: int, llm_dim: int, num_layers: int):
        super().__init__()
        self.cfg, self.ids, self.P, self.H, self.L = cfg, ids, chunk_len, llm_dim, num_layers

    def slot_ids(self) -> list[int]:
        return [self.ids.action_query] * self.P

    def head_query_states(self, ctx: ForwardContext) -> list[torch.Tensor]:
        return [ctx.gather(i, self.ids.action_query, self.P) for i in ctx.head_layer_indexes]

    def aux_loss(self, ctx: ForwardContext) -> tuple[torch.Tensor | None, dict]:
        return None, {}

    def code_slots_spec(self) -> tuple[int, int, tuple[int, ...]] | None:
        """(slot token id, number of code slots, code vocabulary ids), or None without code prediction."""
        return None

    @staticmethod
    def step_valid(ctx: ForwardContext) -> torch.Tensor:
        return ~ctx.batch["action_pad"]


class BaselineStrategy(Strategy):
    pass


class AlignStrategy(Strategy):
    required_sample_keys = ("latent_z",)
    options = ("align_layer", "align_proj_dim", "latent_dim", "latent_loss_weight")

    def __init__(self, cfg, ids, chunk_len, llm_dim, num_layers):
        super().__init__(cfg, ids, chunk_len, llm_dim, num_layers)
        self.align_layer = cfg.align_layer if cfg.align_layer is not None else max(1, int(num_layers * 2 / 3))
        if not 1 <= self.align_layer <= num_layers:
            raise LatentVLAError(f"align_layer {self.align_layer} out of range [1, {num_layers}] (LLM layers "
                                 "of the backbone)")
        self.projector = nn.Sequential(nn.LayerNorm(llm_dim), nn.Linear(llm_dim, cfg.align_proj_dim), nn.GELU(),
                                       nn.Linear(cfg.align_proj_dim, cfg.latent_dim))

    def aux_loss(self, ctx):
        z = ctx.batch["latent_z"]
        if z.ndim != 4 or z.shape[1] != self.P or z.shape[-1] != self.cfg.latent_dim:
            raise LatentVLAError(f"latent_z has shape {tuple(z.shape[1:])}, expected [{self.P}, C, "
                                 f"{self.cfg.latent_dim}]")
        states = ctx.gather(self.align_layer, self.ids.action_query, self.P)
        pred = self.projector(states.float())
        cos = F.cosine_similarity(pred, z.float().mean(2), dim=-1)  # [B, P]
        w = self.step_valid(ctx).float()
        cos = (cos * w).sum() / w.sum().clamp(min=1.0)
        loss = 1.0 - cos
        return self.cfg.latent_loss_weight * loss, {"align_loss": loss.detach(), "cosine": cos.detach()}


class _ImageLatentCodes(Strategy):
    """Shared by la_direct / la_cond: C·P `<|latent_query|>` code slots, CE over the K `<ACT_i>` rows."""

    required_sample_keys = ("latent_idx",)
    options = ("latent_codes_per_step", "token_loss_weight")
    predicts_codes = True

    C = property(lambda self: self.cfg.latent_codes_per_step)

    def code_slots(self) -> list[int]:
        return [self.ids.latent_query] * (self.C * self.P)

    def code_slots_spec(self):
        return self.ids.latent_query, self.C * self.P, self.ids.act

    def aux_loss(self, ctx):
        idx = ctx.batch["latent_idx"]
        if idx.ndim != 3 or idx.shape[1:] != (self.P, self.C):
            raise LatentVLAError(f"latent_idx has shape {tuple(idx.shape[1:])}, expected [{self.P}, {self.C}] "
                                 "(chunk length, codes per step)")
        K = len(self.ids.act)
        if bool(((idx < 0) | (idx >= K)).any()):
            raise LatentVLAError(f"latent_idx holds codes up to {int(idx.max())} but the VLA has {K} <ACT> tokens "
                                 f"(latent_codebook_size {K}): the image LAM that annotated the data uses a larger "
                                 "codebook; pass --latent_codebook_size <the LAM's --codebook_size>")
        labels = idx.reshape(idx.shape[0], self.P * self.C)  # step-major: step 0 codes 0..C-1, step 1 ...
        valid = self.step_valid(ctx).repeat_interleave(self.C, dim=1)
        ce, metrics = code_cross_entropy(ctx, self.ids.latent_query, self.ids.act, labels, valid)
        return self.cfg.token_loss_weight * ce, metrics


class DirectStrategy(_ImageLatentCodes):
    def __init__(self, cfg, ids, chunk_len, llm_dim, num_layers):
        super().__init__(cfg, ids, chunk_len, llm_dim, num_layers)
        self.pool_norm = nn.LayerNorm(llm_dim)
        self.pool_score = nn.Linear(llm_dim, 1)

    def slot_ids(self):
        return self.code_slots()

    def head_query_states(self, ctx):
        out = []
        for i in ctx.head_layer_indexes:
            s = ctx.gather(i, self.ids.latent_query, self.C * self.P)
            s = s.view(s.shape[0], self.P, self.C, -1)  # pool over the C codes of each step (not the chunk)
            w = torch.softmax(self.pool_score(self.pool_norm(s.float())).squeeze(-1), dim=-1)  # [B, P, C]
            out.append((w.unsqueeze(-1) * s.float()).sum(2).to(s.dtype))
        return out


class CondStrategy(_ImageLatentCodes):
    def slot_ids(self):
        return self.code_slots() + [self.ids.action_query] * self.P


class TokStrategy(Strategy):
    options = ("token_loss_weight",)
    helper_option = "action_tokenizer_ckpt"
    predicts_codes = True

    @classmethod
    def load_helper(cls, cfg, platform):
        """The frozen action tokenizer whose codes are the targets, and its codebook size M."""
        if not cfg.action_tokenizer_ckpt:
            raise LatentVLAError("--vla_id la_tok needs --action_tokenizer_ckpt (a checkpoint written by "
                                 "`latentvla lam action-train`, or the paper's tokenizer_step_N.pt)")
        path = Path(cfg.action_tokenizer_ckpt)
        if not path.exists():
            raise LatentVLAError(f"--action_tokenizer_ckpt {path}: not found")
        from latentvla.lam.action_tokenizer import ActionChunkTokenizer

        try:
            tok = ActionChunkTokenizer.from_checkpoint(path, device="cpu")
        except LatentVLAError as e:
            raise LatentVLAError(f"--action_tokenizer_ckpt: {e}") from None
        except Exception as e:  # a file that is not a tokenizer checkpoint at all
            raise LatentVLAError(f"--action_tokenizer_ckpt {path}: cannot load an action tokenizer "
                                 f"({type(e).__name__}: {e})") from None
        if cfg.codebook_size is not None and int(tok.codebook_size) != cfg.codebook_size:
            raise LatentVLAError(f"--action_tokenizer_ckpt {path}: codebook size {tok.codebook_size} != "
                                 f"--codebook_size {cfg.codebook_size}")
        try:
            tok.check_platform(platform, where=f"--data_mix {cfg.data_mix}")
        except LatentVLAError as e:
            raise LatentVLAError(f"--action_tokenizer_ckpt: {e}") from None
        return tok, {"codebook_size": int(tok.codebook_size)}

    def slot_ids(self):
        return [self.ids.latent_query] * self.P

    def head_query_states(self, ctx):
        return [ctx.gather(i, self.ids.latent_query, self.P) for i in ctx.head_layer_indexes]

    def code_slots_spec(self):
        return self.ids.latent_query, self.P, self.ids.la

    def aux_loss(self, ctx):
        tok = ctx.helper
        if tok is None:
            raise LatentVLAError("la_tok training needs the frozen action tokenizer (--action_tokenizer_ckpt)")
        actions = ctx.batch["actions"]
        with torch.no_grad():
            dev = getattr(tok, "device", actions.device)
            codes = torch.as_tensor(tok.encode(actions.detach().float().to(dev))).to(actions.device).long()
        if codes.shape != actions.shape[:2]:
            raise LatentVLAError(f"action tokenizer returned codes of shape {tuple(codes.shape)}, expected "
                                 f"{tuple(actions.shape[:2])} (one code per chunk step)")
        ce, metrics = code_cross_entropy(ctx, self.ids.latent_query, self.ids.la, codes, self.step_valid(ctx))
        return self.cfg.token_loss_weight * ce, metrics


def build_strategy(cfg, ids: SpecialTokenIds, chunk_len: int, llm_dim: int, num_layers: int) -> Strategy:
    return strategy_class(cfg.vla_id)(cfg, ids, chunk_len, llm_dim, num_layers)
