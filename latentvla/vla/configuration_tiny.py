"""Options of `latentvla tiny-vlm`: a random Qwen3-VL checkpoint for tests, demos and benchmarks.

`--preset tiny` (default) is the hidden-64 test model; `--preset qwen3-vl-2b` has Qwen3-VL-2B-Instruct's
exact shapes (random weights), depth overridable: `--num_layers 2 --vision_depth 2` keeps every
width and moves the deepstack blocks to the same relative depth.

Light module (no torch import): `latentvla tiny-vlm --help` stays fast. `validate()` refuses
configs that transformers would accept but that break at forward time (head_dim, M-RoPE
sections, deepstack indexes, token ids).
"""

from __future__ import annotations

from dataclasses import dataclass

from latentvla.config import arg
from latentvla.errors import LatentVLAError

# Qwen special tokens in the order (and relative ids) of the real Qwen2/Qwen3 tokenizer.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


# Size presets. "qwen3-vl-2b" is Qwen3-VL-2B-Instruct's public config.json (text_config and
# vision_config), so a random checkpoint of its exact shapes can be written without the weights.
TINY_VLM_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
                 vocab_size=512, mrope_section=None, rope_theta=5000000.0, vision_depth=2, vision_hidden_size=32,
                 vision_num_heads=2, vision_intermediate_size=64, num_position_embeddings=256,
                 deepstack_visual_indexes=[1], tie_word_embeddings=True, dtype="float32"),
    "qwen3-vl-2b": dict(hidden_size=2048, num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
                        intermediate_size=6144, vocab_size=151936, mrope_section=[24, 20, 20], rope_theta=5000000.0,
                        vision_depth=24, vision_hidden_size=1024, vision_num_heads=16, vision_intermediate_size=4096,
                        num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17], tie_word_embeddings=True,
                        dtype="bfloat16"),
}


def scaled_deepstack(indexes: list[int], preset_depth: int, depth: int) -> list[int]:
    """The preset's deepstack blocks moved to the same relative depth of a shallower vision tower."""
    return sorted({min(depth - 1, int(i * depth / preset_depth)) for i in indexes})


@dataclass
class TinyVLMConfig:
    """Write a random Qwen3-VL checkpoint directory (Hugging Face layout): tiny, or of real shapes (--preset)."""

    out_dir: str = arg(help="Directory to write (config.json, model.safetensors, tokenizer, preprocessor).",
                       positional=True)
    preset: str = arg("tiny", "Size preset: " + ", ".join(TINY_VLM_PRESETS) + " (Qwen3-VL-2B-Instruct's exact config); "
                              "every size flag below overrides it (e.g. --num_layers 2 --vision_depth 2).")
    hidden_size: int | None = arg(None, "LLM hidden size (default: the preset's).")
    num_layers: int | None = arg(None, "Number of LLM decoder layers.")
    num_heads: int | None = arg(None, "LLM attention heads.")
    num_kv_heads: int | None = arg(None, "LLM key/value heads (grouped-query attention); must divide num_heads.")
    head_dim: int | None = arg(None, "LLM per-head dim (even; M-RoPE sections sum to head_dim/2).")
    intermediate_size: int | None = arg(None, "LLM MLP width.")
    vocab_size: int | None = arg(None, "Rows of the embedding / output matrix (>= tokenizer size, like "
                                       "the real model).")
    tokenizer_vocab_size: int = arg(384, "Byte-level BPE vocabulary size before the special tokens (>= 256 + 1).")
    mrope_section: list[int] | None = arg(None, "M-RoPE (t, h, w) sections, summing to head_dim/2 (default: the "
                                                   "preset's, else derived).")
    rope_theta: float | None = arg(None, "RoPE base of the LLM.")
    vision_depth: int | None = arg(None, "Vision transformer blocks.")
    vision_hidden_size: int | None = arg(None, "Vision transformer width.")
    vision_num_heads: int | None = arg(None, "Vision transformer heads.")
    vision_intermediate_size: int | None = arg(None, "Vision transformer MLP width.")
    num_position_embeddings: int | None = arg(None, "Vision position-embedding table size (a square number).")
    deepstack_visual_indexes: list[int] | None = arg(
        None, "Vision blocks whose features are injected into the first LLM layers (< vision_depth; default: the "
              "preset's, moved to the same relative depth when --vision_depth is smaller).")
    patch_size: int = arg(16, "Vision patch size (Qwen3-VL: 16).")
    temporal_patch_size: int = arg(2, "Temporal patch size (Qwen3-VL: 2).")
    merge_size: int = arg(2, "Spatial merge size (Qwen3-VL: 2).")
    tie_word_embeddings: bool | None = arg(None, "Tie the output matrix to the input embedding (as Qwen3-VL-2B).")
    dtype: str | None = arg(None, "Weight dtype on disk: float32 or bfloat16 (the real checkpoint's; "
                                  "default: the preset's).")
    seed: int = arg(0, "Seed of the random weights.")
    overwrite: bool = arg(False, "Replace OUT_DIR if it exists.")

    def __post_init__(self) -> None:
        # Unset size fields take the preset's value; explicit ones (flags or kwargs) win.
        if self.preset not in TINY_VLM_PRESETS:
            raise LatentVLAError(f"tiny-vlm --preset: {self.preset!r} is unknown; expected one of "
                                 f"{', '.join(TINY_VLM_PRESETS)}")
        preset = TINY_VLM_PRESETS[self.preset]
        depth_given, stack_given = self.vision_depth is not None, self.deepstack_visual_indexes is not None
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        if depth_given and not stack_given and self.vision_depth < preset["vision_depth"]:
            self.deepstack_visual_indexes = scaled_deepstack(preset["deepstack_visual_indexes"],
                                                             preset["vision_depth"], self.vision_depth)

    def validate(self) -> None:
        def bad(field: str, msg: str) -> LatentVLAError:
            return LatentVLAError(f"tiny-vlm --{field}: {msg}")

        if not str(self.out_dir).strip():
            raise bad("out_dir", "an output directory is required")
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                     "vocab_size", "vision_depth", "vision_hidden_size", "vision_num_heads",
                     "vision_intermediate_size", "num_position_embeddings", "patch_size", "temporal_patch_size",
                     "merge_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise bad(name, f"must be a positive integer, got {v!r}")
        if self.head_dim % 2:
            raise bad("head_dim", f"must be even (rotary pairs), got {self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise bad("num_kv_heads", f"{self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.vision_hidden_size % self.vision_num_heads:
            raise bad("vision_num_heads",
                      f"{self.vision_num_heads} must divide vision_hidden_size={self.vision_hidden_size}")
        vhd = self.vision_hidden_size // self.vision_num_heads
        if vhd % 4:
            raise bad("vision_hidden_size", f"vision head dim {vhd} must be a multiple of 4 (2-D rotary)")
        side = int(round(self.num_position_embeddings ** 0.5))
        if side * side != self.num_position_embeddings:
            raise bad("num_position_embeddings", f"must be a square number, got {self.num_position_embeddings}")
        sec = self.resolved_mrope_section()
        if len(sec) != 3 or any(s < 1 for s in sec) or sum(sec) != self.head_dim // 2:
            raise bad("mrope_section",
                      f"needs 3 positive sections summing to head_dim/2={self.head_dim // 2}, got {sec}")
        bad_idx = [i for i in self.deepstack_visual_indexes if not 0 <= i < self.vision_depth]
        if bad_idx:
            raise bad("deepstack_visual_indexes", f"{bad_idx} out of range [0, vision_depth={self.vision_depth})")
        if self.dtype not in ("float32", "bfloat16"):
            raise bad("dtype", f"must be float32 or bfloat16, got {self.dtype!r}")
        if self.tokenizer_vocab_size < 257:
            raise bad("tokenizer_vocab_size",
                      f"must be >= 257 (256 byte symbols + merges), got {self.tokenizer_vocab_size}")
        need = self.tokenizer_vocab_size + len(QWEN_SPECIAL_TOKENS)
        if need > self.vocab_size:
            raise bad("vocab_size",
                      f"{self.vocab_size} is smaller than the tokenizer ({self.tokenizer_vocab_size} BPE + "
                                    f"{len(QWEN_SPECIAL_TOKENS)} special tokens = {need}): token ids must "
                                    "be < vocab_size")

    def resolved_mrope_section(self) -> list[int]:
        if self.mrope_section:
            return list(self.mrope_section)
        half = self.head_dim // 2
        t = max(1, round(half * 3 / 8))  # Qwen3-VL-2B: 24 of 64
        h = max(1, (half - t) // 2)
        return [t, h, half - t - h]
