"""`LatentVLA`: Qwen3-VL backbone (+ LoRA, new token rows) + action head + variant strategy.

    model = LatentVLA.from_config(cfg, platform, action_tokenizer=None)
    batch = model.processor.collate(samples)        # also usable as a DataLoader collate_fn
    out = model(batch)                              # {"loss", "metrics", "actions"}
    actions = model.predict_actions(batch)          # [B, P, D] normalized, no labels needed

One backbone pass (`Qwen3VLModel`, i.e. WITHOUT the lm_head: no full-vocabulary logits) and one
head pass serve training and inference alike. The loss is L1 on non-padded steps plus the
strategy's auxiliary loss. Trainable: LoRA, new token rows, head, proprio projector, strategy
modules (`trainable_state_dict`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentvla.errors import LatentVLAError
from latentvla.robots import Platform
from latentvla.utils.device import resolve_device
from latentvla.vla.backbone import SpecialTokenIds, load_backbone
from latentvla.vla.configuration_vla import VLAConfig
from latentvla.vla.head import ActionHead, ProprioProjector
from latentvla.vla.image_processor import QwenVLImageProcessor
from latentvla.vla.processor import VLAProcessor
from latentvla.vla.strategies import ForwardContext, build_strategy

# Plus the images: "images" (uint8, patchified on the model's device) or ready "pixel_values".
BACKBONE_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")


class LatentVLA(nn.Module):
    def __init__(self, cfg: VLAConfig, platform: Platform, backbone, tokenizer, ids: SpecialTokenIds,
                 action_tokenizer=None):
        super().__init__()
        self.cfg, self.platform, self.ids = cfg, platform, ids
        self.backbone = backbone
        text_cfg = backbone.config.text_config
        self.llm_dim, self.num_layers = text_cfg.hidden_size, text_cfg.num_hidden_layers
        self.head_layers = min(cfg.head_layers or 12, self.num_layers)
        if cfg.head_layers is not None and cfg.head_layers > self.num_layers:
            raise LatentVLAError(f"head_layers {cfg.head_layers} exceeds the backbone's {self.num_layers} LLM layers")
        P, D = platform.chunk_len, platform.action_dim
        self.strategy = build_strategy(cfg, ids, P, self.llm_dim, self.num_layers)
        self.token_rows.new_output_rows.requires_grad_(self.strategy.predicts_codes)
        hd = cfg.head_dim or default_head_dim(self.llm_dim)
        heads = cfg.head_num_heads
        while hd % heads or (hd // heads) % 2:  # tiny widths: fall back to fewer heads
            heads -= 1
        self.action_head = ActionHead(self.head_layers, self.llm_dim, hd, heads, P, D, rotary=cfg.use_pro_version,
                                      mlp_ratio=cfg.head_mlp_ratio)
        self.proprio_projector = ProprioProjector(platform.proprio_dim, self.llm_dim) if cfg.use_proprio else None
        self._action_tokenizer = [action_tokenizer]  # frozen, not a submodule, never saved
        if cfg.vla_id == "la_tok" and action_tokenizer is not None:
            check_action_tokenizer(action_tokenizer, cfg, platform)
        image_proc = QwenVLImageProcessor.from_pretrained(cfg.vlm_path, min_pixels=1)
        self.processor = VLAProcessor(tokenizer, image_proc, ids, self.strategy.slot_ids(), P,
                                      cfg.num_images(platform.num_cameras), cfg.default_image_size,
                                      platform.proprio_dim, cfg.use_proprio)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: VLAConfig, platform: Platform, action_tokenizer=None,
                    device: str | torch.device | None = None) -> LatentVLA:
        cfg.validate()
        dev = resolve_device(device)
        backbone, tokenizer, ids = load_backbone(cfg, dev)
        model = cls(cfg, platform, backbone, tokenizer, ids, action_tokenizer)
        # Head/projector/strategy stay fp32 (autocast handles mixed precision on GPU).
        for m in (model.action_head, model.proprio_projector, model.strategy):
            if m is not None:
                m.to(dev)
        return model

    device = property(lambda self: self.action_head.chunk_queries.device)
    chunk_len = property(lambda self: self.platform.chunk_len)
    action_tokenizer = property(lambda self: self._action_tokenizer[0])
    token_rows = property(lambda self: self.backbone.model.language_model.embed_tokens)  # a NewTokenEmbedding

    def set_action_tokenizer(self, tok) -> None:
        check_action_tokenizer(tok, self.cfg, self.platform)
        self._action_tokenizer[0] = tok

    def required_sample_keys(self) -> tuple[str, ...]:
        return self.strategy.required_sample_keys

    # ------------------------------------------------------------------ forward
    def _to_device(self, batch: dict) -> dict:
        dev = self.device
        return {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def _pixel_values(self, batch: dict) -> torch.Tensor:
        """The backbone's pixel_values in its dtype: given, or made from the uint8 `images` on their device
        (after `_to_device`, so only uint8 crossed host -> device)."""
        dtype = self.backbone.dtype
        if "pixel_values" in batch:
            return batch["pixel_values"].to(dtype)
        if "images" not in batch:
            raise LatentVLAError("batch has neither 'images' nor 'pixel_values' (build it with "
                                 "model.processor.collate)")
        images, grid = batch["images"], batch["image_grid_thw"]
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] != grid.shape[0]:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise LatentVLAError(f"batch 'images' {shape} vs {grid.shape[0]} image_grid_thw rows: expected one "
                                 "[H, W, 3] image per row (build it with model.processor.collate)")
        return self.processor.image_processor.pixel_values_from_images(images, dtype)

    def _run(self, batch: dict) -> tuple[torch.Tensor, ForwardContext]:
        missing = [k for k in BACKBONE_INPUTS if k not in batch]
        if missing:
            raise LatentVLAError(f"batch lacks {missing} (build it with model.processor.collate)")
        out = self.backbone.model(  # Qwen3VLModel: hidden states only, the lm_head is never applied
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=self._pixel_values(batch),
            image_grid_thw=batch["image_grid_thw"], output_hidden_states=True, use_cache=False)
        hs = out.hidden_states
        layers = list(range(len(hs) - self.head_layers, len(hs)))
        ctx = ForwardContext(batch, hs, layers, self.ids, self.token_rows, self.action_tokenizer)
        img_states, img_mask = self._image_states(hs, layers, batch["mm_token_type_ids"])
        query_states = self.strategy.head_query_states(ctx)
        proprio_tok = None
        if self.proprio_projector is not None:
            if "proprio" not in batch:
                raise LatentVLAError("batch lacks 'proprio' but the model uses proprio (use_proprio=True)")
            proprio_tok = self.proprio_projector(batch["proprio"].float().to(self.device))
        actions = self.action_head([q.float() for q in query_states], [s.float() for s in img_states],
                                   img_mask, proprio_tok)
        return actions, ctx

    @staticmethod
    def _image_states(hs, layers, mm_token_type_ids) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Image-token states per layer, sliced by token type and padded: [B, Nmax, H] + mask."""
        is_img = mm_token_type_ids == 1
        counts = is_img.sum(1)
        n = int(counts.max())
        if n == 0:
            raise LatentVLAError("batch has no image tokens")
        order = torch.argsort((~is_img).to(torch.int8), dim=1, stable=True)[:, :n]  # image positions first, in order
        mask = torch.arange(n, device=counts.device).unsqueeze(0) < counts.unsqueeze(1)
        rows = torch.arange(order.shape[0], device=order.device).unsqueeze(1)
        return [hs[i][rows, order] for i in layers], mask

    def forward(self, batch: dict) -> dict[str, Any]:
        batch = self._to_device(batch)
        has_targets = "actions" in batch
        if has_targets:
            missing = [k for k in self.required_sample_keys() if k not in batch]
            if missing:
                raise LatentVLAError(f"vla_id {self.cfg.vla_id} needs {missing} in every sample (latent labels: "
                                     "train on an annotated dataset, see `latentvla lam annotate`)")
        actions, ctx = self._run(batch)
        if not has_targets:
            return {"actions": actions}
        target = batch["actions"].float()
        if target.shape != actions.shape:
            raise LatentVLAError(f"target actions {tuple(target.shape[1:])} vs model output "
                                 f"{tuple(actions.shape[1:])}: window_size / action dim must match the platform")
        valid = (~batch["action_pad"]).float().unsqueeze(-1)
        l1 = ((actions - target).abs() * valid).sum() / (valid.sum() * actions.shape[-1]).clamp(min=1.0)
        aux, metrics = self.strategy.aux_loss(ctx)
        loss = l1 if aux is None else l1 + aux
        metrics = {"l1": l1.detach(), **metrics}
        return {"loss": loss, "metrics": {k: float(v) for k, v in metrics.items()}, "actions": actions}

    @torch.no_grad()
    def predict_actions(self, batch: dict) -> torch.Tensor:
        """Normalized [B, P, D] actions: the same forward, no labels, no tokenizer, no LAM."""
        batch = {k: v for k, v in batch.items() if k not in ("actions", "action_pad", "latent_idx", "latent_z")}
        return self._run(self._to_device(batch))[0]

    @torch.no_grad()
    def predict_codes(self, batch: dict) -> torch.Tensor:
        """Top-1 codes at the code slots [B, n] (la_direct/la_cond: C·P image-LAM codes step-major;
        la_tok: P action-tokenizer codes). For analysis only; actions never depend on it."""
        spec = self.strategy.code_slots_spec()
        if spec is None:
            raise LatentVLAError(f"vla_id {self.cfg.vla_id} predicts no codes")
        slot, n, vocab = spec
        batch = {k: v for k, v in batch.items() if k not in ("actions", "action_pad", "latent_idx", "latent_z")}
        _, ctx = self._run(self._to_device(batch))
        states = ctx.gather(len(ctx.hidden_states) - 1, slot, n).float()
        return (states @ self.token_rows.output_rows(list(vocab)).float().t()).argmax(-1)

    @torch.no_grad()
    def decode_predicted_tokens(self, batch: dict) -> torch.Tensor:
        """la_tok `--decode_tokens`: predicted codes -> actions [B, P, D] through the tokenizer's decoder."""
        if self.cfg.vla_id != "la_tok" or self.action_tokenizer is None:
            raise LatentVLAError("decode_tokens needs vla_id la_tok and its action tokenizer")
        return torch.as_tensor(self.action_tokenizer.decode(self.predict_codes(batch))).float()

    # ------------------------------------------------------------------ weights
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor], source: str = "state dict") -> None:
        params = dict(self.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
        if missing or unexpected:
            raise LatentVLAError(f"{source}: weights do not match this model (missing {missing[:4]}, unexpected "
                                 f"{unexpected[:4]}); was it trained with a different vla_id / config?")
        with torch.no_grad():
            for n in expected:
                if params[n].shape != sd[n].shape:
                    raise LatentVLAError(f"{source}: {n} has shape {tuple(sd[n].shape)}, model expects "
                                         f"{tuple(params[n].shape)}")
                params[n].copy_(sd[n].to(params[n].dtype))

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights with LoRA folded in and the new token rows written into a resized vocabulary:
        `backbone.*` keys in the Hugging Face Qwen3-VL layout, plus the head/strategy modules.
        The embedding and lm_head rows of the new tokens differ after training, so a backbone with
        `tie_word_embeddings=True` (Qwen3-VL-2B) must be re-loaded untied to use both."""
        from peft.tuners.lora import LoraLayer

        rows = self.token_rows
        out: dict[str, torch.Tensor] = {}
        lora_prefixes = {}
        for name, mod in self.backbone.named_modules():
            if isinstance(mod, LoraLayer):
                lora_prefixes[name] = mod
        for name, t in self.backbone.state_dict().items():
            if "lora_" in name or name.endswith("new_rows") or name.endswith("new_output_rows"):
                continue
            key = name.replace(".base_layer.", ".").replace("embed_tokens.base.", "embed_tokens.")
            mod_name = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
            if mod_name in lora_prefixes and name.endswith("weight"):
                mod = lora_prefixes[mod_name]
                t = t + mod.get_delta_weight("default").to(t.dtype)
            out["backbone." + key] = t.detach().clone()
        n_total = rows.first_new + rows.num_new
        for key, new in (("backbone.model.language_model.embed_tokens.weight", rows.new_rows),
                         ("backbone.lm_head.weight", rows.new_output_rows)):
            base = out.get(key, out["backbone.model.language_model.embed_tokens.weight"])
            full = torch.zeros(max(n_total, base.shape[0]), base.shape[1], dtype=base.dtype)
            full[: base.shape[0]] = base
            full[rows.first_new:n_total] = new.detach().to(base.dtype)
            out[key] = full
        for prefix, mod in (("action_head.", self.action_head), ("proprio_projector.", self.proprio_projector),
                            ("strategy.", self.strategy)):
            if mod is not None:
                out.update({prefix + k: v.detach().clone() for k, v in mod.state_dict().items()})
        return out

    def load_merged_state_dict(self, sd: dict[str, torch.Tensor], source: str = "merged weights") -> None:
        """Inverse of `merged_state_dict` into a model built with lora_rank=0 (the `--merge_lora` export)."""
        if self.cfg.lora_rank:
            raise LatentVLAError(f"{source}: merged weights load into a model built with lora_rank=0")
        rows = self.token_rows
        sd = dict(sd)
        emb_key, head_key = "backbone.model.language_model.embed_tokens.weight", "backbone.lm_head.weight"
        if emb_key not in sd or head_key not in sd:
            raise LatentVLAError(f"{source}: lacks {emb_key} / {head_key} (not written by merged_state_dict?)")
        emb, head = sd.pop(emb_key), sd.pop(head_key)
        n_total, n_base = rows.first_new + rows.num_new, rows.base.weight.shape[0]
        if emb.shape[0] < n_total or head.shape[0] < n_total:
            raise LatentVLAError(f"{source}: vocabulary of {emb.shape[0]} rows, the model's special "
                                 f"tokens need {n_total}")
        sd["backbone.model.language_model.embed_tokens.base.weight"] = emb[:n_base]
        sd["backbone.model.language_model.embed_tokens.new_rows"] = emb[rows.first_new:n_total]
        sd["backbone.model.language_model.embed_tokens.new_output_rows"] = head[rows.first_new:n_total]
        sd[head_key] = head[:n_base]  # rows of new ids in the base tables are never read (overridden / no lm_head)
        own = self.state_dict()
        bad = sorted(k for k, v in sd.items() if k in own and own[k].shape != v.shape)
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        if missing or unexpected or bad:
            raise LatentVLAError(f"{source}: weights do not match this model (missing {missing[:4]}, unexpected "
                                 f"{unexpected[:4]}, shape mismatch {bad[:4]})")
        self.load_state_dict(sd, strict=True)


def default_head_dim(llm_dim: int) -> int:
    """H/4, at least 64 (8 heads of 8; H itself below that): 512 at Qwen3-VL-2B's H = 2048, an 88 M-parameter
    head (12 blocks) instead of 806 M at H, which fits as well (docs/benchmarks.md) and keeps the policy
    checkpoint well under 1 GB."""
    return max(llm_dim // 4, min(llm_dim, 64))


def check_action_tokenizer(tok, cfg: VLAConfig, platform: Platform) -> None:
    for attr in ("encode",):
        if not callable(getattr(tok, attr, None)):
            raise LatentVLAError(f"action tokenizer {type(tok).__name__} lacks .{attr}()")
    m = getattr(tok, "codebook_size", None)
    if m is not None and int(m) != cfg.codebook_size:
        raise LatentVLAError(f"action tokenizer codebook size {m} != codebook_size {cfg.codebook_size} "
                             "of the VLA config")
    d = getattr(tok, "action_dim", None)
    if d is not None and int(d) != platform.action_dim:
        raise LatentVLAError(f"action tokenizer action_dim {d} != platform {platform.name!r} action_dim "
                             f"{platform.action_dim}")
    p = getattr(tok, "chunk_len", None)
    if p is not None and int(p) != platform.chunk_len:
        raise LatentVLAError(f"action tokenizer chunk_len {p} != platform {platform.name!r} chunk_len "
                             f"{platform.chunk_len}")
