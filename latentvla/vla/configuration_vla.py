"""`VLAConfig`: everything that defines a LatentVLA model (saved in every policy checkpoint).

Light module (no torch). Sizes the model reads from the backbone (hidden size, number of
layers) are never stored here; `None` fields mean "derive from the backbone / platform":
- `head_layers`: the last min(12, num_layers) LLM layers feed the action head.
- `head_dim`: a quarter of the LLM hidden size, at least 64 (512 for Qwen3-VL-2B: an 88 M-parameter head).
- `align_layer`: int(2/3 · num_layers) (18 of 28 for Qwen3-VL-2B), at least 1.
- `num_images_in_input`: the platform's camera count, 1 with `use_wrist_image=False`.
`codebook_size` is the action tokenizer's M (la_tok, `<LA_i>` tokens); the image LAM's K, C and Z
are `latent_codebook_size`, `latent_codes_per_step`, `latent_dim`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from latentvla.config import arg, check_min
from latentvla.errors import LatentVLAError

# The variant registry, the only list of vla_ids: each id's Strategy class, or "module:Class" until first used
# (config modules and `--help` stay free of torch). `strategies.register_strategy` adds variants.
STRATEGIES: dict[str, type | str] = {i: f"latentvla.vla.strategies:{c}" for i, c in (
    ("baseline", "BaselineStrategy"), ("la_align", "AlignStrategy"), ("la_direct", "DirectStrategy"),
    ("la_cond", "CondStrategy"), ("la_tok", "TokStrategy"))}
VLA_IDS = tuple(STRATEGIES)  # the built-in ones


def strategy_class(vla_id: str):
    """The Strategy class registered for `vla_id` (a built-in one is imported here, on first use)."""
    if vla_id not in STRATEGIES:
        raise LatentVLAError(f"vla_id {vla_id!r} is unknown; expected one of {', '.join(STRATEGIES)}")
    entry = STRATEGIES[vla_id]
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = STRATEGIES[vla_id] = getattr(importlib.import_module(module), name)
        entry.name = vla_id
    return entry


DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class VLAOptions:
    """The model options that `latentvla train` takes under the same names (`TrainConfig` inherits them)."""

    vla_id: str = arg("baseline", "Variant: " + ", ".join(STRATEGIES) + ", or one registered by --strategy_modules.")
    strategy_modules: list[str] = arg([], "Python modules imported first: they register variants defined outside "
                                          "latentvla (@register_strategy); recorded so the checkpoint loads them.")
    vlm_path: str = arg("", "Local Qwen3-VL directory (Hugging Face layout).")
    lora_rank: int = arg(64, "LoRA rank on the backbone's linear layers (0 = no LoRA, backbone fully frozen).")
    lora_alpha: float = arg(16.0, "LoRA alpha.")
    lora_dropout: float = arg(0.0, "LoRA dropout.")
    head_layers: int | None = arg(None, "Last LLM layers read by the action head (default min(12, num_layers)).")
    head_dim: int | None = arg(None, "Action-head width (default: LLM hidden size / 4, at least 64: 512 "
                                     "for Qwen3-VL-2B; 2048 = the 806 M-parameter head of earlier versions).")
    head_num_heads: int = arg(8, "Attention heads in the action head.")
    head_mlp_ratio: int = arg(4, "Action-head MLP width as a multiple of head_dim.")
    use_pro_version: bool = arg(False, "Rotary positions on the action head's queries/keys (VLA-Adapter-Pro style).")
    align_layer: int | None = arg(None, "la_align: LLM layer aligned to latent_z (default int(2/3 num_layers)).")
    token_loss_weight: float = arg(1.0, "Weight of the code cross-entropy (la_direct, la_cond, la_tok).")
    latent_loss_weight: float = arg(1.0, "Weight of the la_align cosine loss.")
    codebook_size: int = arg(256, "Action tokenizer codebook size M (la_tok `<LA_i>` tokens).")
    latent_codebook_size: int = arg(16, "Image-LAM codebook size K (`<ACT_i>` tokens).")
    default_image_size: int = arg(224, "Image side fed to the backbone (multiple of 32).")
    use_wrist_image: bool = arg(True, "Feed the wrist camera(s) too.")
    use_proprio: bool = arg(True, "Feed the proprioceptive state (a proprio token to the head).")
    num_images_in_input: int | None = arg(None, "Cameras per sample (default: platform's; 1 without wrist images).")
    gradient_checkpointing: bool = arg(False, "Recompute backbone activations in backward to save memory.")
    attn_implementation: str | None = arg(None, "flash_attention_2 / sdpa / eager (default: flash_attention_2 on GPU "
                                                "if installed, else sdpa).")

    def check_variant(self, dash: str = "") -> None:
        """Import `strategy_modules` (they register variants with `@register_strategy`), then look up `vla_id`."""
        for name in self.strategy_modules:
            try:
                importlib.import_module(name)
            except Exception as e:  # not on PYTHONPATH, or failing on import: named, not a traceback
                raise LatentVLAError(f"{dash}strategy_modules {name!r}: cannot import it "
                                     f"({type(e).__name__}: {e})") from None
        if self.vla_id not in STRATEGIES:
            raise LatentVLAError(f"{dash}vla_id {self.vla_id!r} is unknown; expected one of {', '.join(STRATEGIES)} "
                                 f"(a variant defined outside latentvla needs its module in {dash}strategy_modules)")


@dataclass
class VLAConfig(VLAOptions):
    """A LatentVLA model: backbone, LoRA, action head and latent-supervision variant."""

    lora_target_modules: list[str] = arg(list(DEFAULT_LORA_TARGETS), "Backbone linear layers that get LoRA adapters.")
    latent_codes_per_step: int = arg(4, "Image-LAM codes per transition C.")
    latent_dim: int = arg(128, "Image-LAM latent dim Z (la_align target).")
    align_proj_dim: int = arg(256, "Hidden width of the la_align projector.")
    dtype: str = arg("auto", "Backbone weight dtype: auto (bf16 on GPU, fp32 on CPU), bfloat16, float32.")

    def validate(self) -> None:
        self.check_variant()
        if self.default_image_size < 32 or self.default_image_size % 32:
            raise LatentVLAError(f"default_image_size must be a positive multiple of 32, got {self.default_image_size}")
        check_min(self, ("codebook_size", "latent_codebook_size", "latent_codes_per_step", "latent_dim",
                         "head_num_heads", "align_proj_dim", "head_mlp_ratio"), prefix="VLA config ")
        check_min(self, ("lora_rank",), 0, prefix="")
        for name in ("head_layers", "head_dim", "align_layer", "num_images_in_input"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise LatentVLAError(f"VLA config {name} must be >= 1 (or None for the default), got {v}")
        if self.dtype not in ("auto", "bfloat16", "float32", "float16"):
            raise LatentVLAError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if self.attn_implementation not in (None, "flash_attention_2", "sdpa", "eager"):
            raise LatentVLAError("attn_implementation must be flash_attention_2, sdpa or eager, got "
                                 f"{self.attn_implementation!r}")

    def num_images(self, platform_cameras: int) -> int:
        expected = platform_cameras if self.use_wrist_image else 1  # what the data pipeline yields per sample
        if self.num_images_in_input is not None and self.num_images_in_input != expected:
            # Caught here, before the backbone loads, instead of at the first batch.
            why = f"the platform has {platform_cameras}" if self.use_wrist_image else "use_wrist_image False"
            raise LatentVLAError(
                f"num_images_in_input {self.num_images_in_input} does not match the {expected} camera image(s) per "
                f"sample ({why}); pass --num_images_in_input {expected} or leave it out")
        return expected
