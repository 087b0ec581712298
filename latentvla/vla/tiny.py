"""`latentvla tiny-vlm`: write a tiny random Qwen3-VL checkpoint in the Hugging Face layout.

The directory has exactly the files a real Qwen3-VL-2B-Instruct download has that we read:
`config.json` + `model.safetensors` (via `save_pretrained`), `tokenizer.json` +
`tokenizer_config.json` (a byte-level BPE trained here on a small built-in corpus, with the Qwen
special tokens appended after the BPE vocabulary, as in the real tokenizer) and
`preprocessor_config.json` (patch 16, temporal patch 2, merge 2, mean = std = 0.5). Tests and
the demo load it through the same `--vlm_path` code path as the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

from latentvla.errors import LatentVLAError
from latentvla.utils.atomic import atomic_directory
from latentvla.vla.configuration_tiny import QWEN_SPECIAL_TOKENS, TinyVLMConfig

# The pre-tokenizer split pattern of the Qwen2/Qwen3 tokenizers (a public fact of their format).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Small corpus for the BPE merges: robot instructions and the prompt template words.
_CORPUS = [
    "put the bowl on the plate", "open the top drawer and put the bowl inside",
    "push the plate to the front of the stove",
    "put the cream cheese in the bowl", "turn on the stove", "put the bowl on the stove",
    "put the wine bottle on top of the cabinet",
    "open the middle drawer of the cabinet", "put the wine bottle on the rack",
    "pick up the black bowl and place it on the plate",
    "pick up the alphabet soup and place it in the basket",
    "put both the alphabet soup and the tomato sauce in the basket",
    "put the white mug on the left plate and put the yellow and white mug on the right plate",
    "close the microwave", "reach the red block", "push the button", "slide the drawer closed",
    "predict the next 8 robot actions.", "predict the next 25 robot actions.", "predict the next 4 robot actions.",
    "user", "assistant", "system", "you are a helpful assistant.", "0 1 2 3 4 5 6 7 8 9",
]


def build_tiny_tokenizer(bpe_vocab_size: int):
    """A byte-level BPE (`tokenizers.Tokenizer`) with the Qwen pre-tokenizer and special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    corpus = _CORPUS * 4 + [s.capitalize() for s in _CORPUS]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    return tok


def _tokenizer_config(special_ids: dict[str, int]) -> dict:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 262144,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True}
            for t, i in special_ids.items()
        },
    }


def _preprocessor_config(cfg: TinyVLMConfig) -> dict:
    return {
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "processor_class": "Qwen3VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
        "patch_size": cfg.patch_size,
        "temporal_patch_size": cfg.temporal_patch_size,
        "merge_size": cfg.merge_size,
        "resample": 3,
    }


def build_qwen3vl_config(cfg: TinyVLMConfig, special_ids: dict[str, int]):
    from transformers import Qwen3VLConfig

    text = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                            "mrope_section": cfg.resolved_mrope_section(), "mrope_interleaved": True},
        "bos_token_id": None,
        "eos_token_id": special_ids["<|im_end|>"],
        "pad_token_id": None,
    }
    vision = {
        "depth": cfg.vision_depth,
        "hidden_size": cfg.vision_hidden_size,
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": cfg.vision_intermediate_size,
        "num_heads": cfg.vision_num_heads,
        "in_channels": 3,
        "patch_size": cfg.patch_size,
        "spatial_merge_size": cfg.merge_size,
        "temporal_patch_size": cfg.temporal_patch_size,
        "out_hidden_size": cfg.hidden_size,
        "num_position_embeddings": cfg.num_position_embeddings,
        "deepstack_visual_indexes": list(cfg.deepstack_visual_indexes),
    }
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=special_ids["<|image_pad|>"],
        video_token_id=special_ids["<|video_pad|>"],
        vision_start_token_id=special_ids["<|vision_start|>"],
        vision_end_token_id=special_ids["<|vision_end|>"],
        tie_word_embeddings=cfg.tie_word_embeddings,
        architectures=["Qwen3VLForConditionalGeneration"],
    )


def write_tiny_vlm(cfg: TinyVLMConfig) -> Path:
    """Write the checkpoint directory atomically and return its path."""
    cfg.validate()
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    out = Path(cfg.out_dir)
    if out.exists() and not cfg.overwrite:
        raise LatentVLAError(f"tiny-vlm: {out} already exists (pass --overwrite True to replace it)")

    tok = build_tiny_tokenizer(cfg.tokenizer_vocab_size)
    special_ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    if max(special_ids.values()) >= cfg.vocab_size:
        raise LatentVLAError(f"tiny-vlm --vocab_size: {cfg.vocab_size} too small for tokenizer ids up to "
                             f"{max(special_ids.values())}")
    config = build_qwen3vl_config(cfg, special_ids)

    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the storage dtype: a 2B-shaped model never exists twice in memory
    try:
        model = Qwen3VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    with atomic_directory(out, overwrite=cfg.overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(special_ids), indent=2) + "\n")
        (tmp / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(cfg), indent=2) + "\n")
    print(f"wrote random Qwen3-VL, preset {cfg.preset} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {cfg.dtype}) to {out}")
    return out
