"""`latentvla tiny-vlm` and our Qwen3-VL image processor."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from latentvla.cli import main
from latentvla.config import parse_config
from latentvla.errors import LatentVLAError
from latentvla.vla.configuration_tiny import QWEN_SPECIAL_TOKENS, TinyVLMConfig
from latentvla.vla.image_processor import QwenVLImageProcessor


def test_tiny_vlm_layout_and_transformers_loading(tiny_vlm_dir):
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    names = {p.name for p in tiny_vlm_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json"} <= names
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    cfg = model.config
    assert cfg.text_config.hidden_size == 64 and cfg.text_config.num_hidden_layers == 2
    assert cfg.vision_config.depth == 2 and cfg.vision_config.patch_size == 16
    for t in QWEN_SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(t) < cfg.text_config.vocab_size
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>put the bowl on the plate.<|im_end|>\n"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert ids.count(cfg.image_token_id) == 1  # special tokens stay single tokens


def test_tiny_vlm_forward_with_our_processor(tiny_vlm_dir):
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    proc = QwenVLImageProcessor.from_pretrained(tiny_vlm_dir, min_pixels=1)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    vis = proc([img])
    n = proc.num_tokens(64, 64)
    assert n == 4 and vis["pixel_values"].shape == (16, 3 * 2 * 16 * 16)
    text = "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>hi<|im_end|>\n"
    ids = torch.tensor([tok(text)["input_ids"]])
    mm = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        out = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                          output_hidden_states=True, **vis)
    assert len(out.hidden_states) == 3 and out.last_hidden_state.shape == (1, ids.shape[1], 64)


def test_cli_acceptance_command(tmp_path):
    out = tmp_path / "t"
    assert main(["tiny-vlm", str(out), "--hidden_size", "32", "--head_dim", "8", "--num_layers", "1"]) == 0
    code = f"from transformers import Qwen3VLForConditionalGeneration as M; M.from_pretrained({str(out)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["rope_parameters"]["mrope_section"] == [2, 1, 1]
    assert main(["tiny-vlm", str(out)]) == 2  # exists, no --overwrite


@pytest.mark.parametrize("argv, field", [
    (["--head_dim", "15"], "head_dim"),
    (["--mrope_section", "4,2,1"], "mrope_section"),
    (["--deepstack_visual_indexes", "2"], "deepstack_visual_indexes"),
    (["--vocab_size", "300"], "vocab_size"),
    (["--num_heads", "4", "--num_kv_heads", "3"], "num_kv_heads"),
    (["--num_position_embeddings", "200"], "num_position_embeddings"),
])
def test_tiny_config_validation(argv, field, tmp_path):
    with pytest.raises(LatentVLAError, match=field):
        parse_config(TinyVLMConfig, [str(tmp_path / "x"), *argv])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("shape", [(64, 64), (224, 224), (100, 150), (300, 200), (31, 47)])
def test_image_processor_matches_transformers_pil_bit_for_bit(tiny_vlm_dir, shape):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(sum(shape))
    images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(2)]
    for overrides in ({}, {"min_pixels": 1}):
        ours = QwenVLImageProcessor.from_pretrained(tiny_vlm_dir, **overrides)
        ref = Qwen2VLImageProcessorPil.from_pretrained(tiny_vlm_dir)
        kw = {"size": {"shortest_edge": ours.min_pixels, "longest_edge": ours.max_pixels}}
        r = ref(images, return_tensors="np", **kw)
        o = ours(images)
        assert o["pixel_values"].dtype.is_floating_point and r["pixel_values"].dtype == np.float32
        assert np.array_equal(r["pixel_values"], o["pixel_values"].numpy())
        assert np.array_equal(r["image_grid_thw"], o["image_grid_thw"].numpy())


def test_image_processor_errors(tmp_path):
    with pytest.raises(LatentVLAError, match="preprocessor_config.json"):
        QwenVLImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(LatentVLAError, match="uint8"):
        QwenVLImageProcessor()([np.zeros((64, 64, 3), np.float32)])
