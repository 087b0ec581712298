"""Every variant at Qwen3-VL-2B-Instruct's full widths (hidden 2048, vocab 151 936, vision width 1024, ...)
with 2 LLM layers and 2 vision blocks: `latentvla train` takes a step and writes a checkpoint, which
reloads into `VLAPolicy`, whose inference equals the training forward. Toy widths hide what only
real widths show (an 806 M-parameter head, multi-GB checkpoints, a first step that blows up)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentvla.cli import main
from latentvla.robots import get_platform, unnormalize
from latentvla.vla.configuration_vla import VLA_IDS

LIBERO = get_platform("libero")


@pytest.fixture(scope="module")
def qwen3vl_2b_shallow(tmp_path_factory):
    """`latentvla tiny-vlm --preset qwen3-vl-2b --num_layers 2 --vision_depth 2` (bf16 on disk, ~1 GB)."""
    out = tmp_path_factory.mktemp("q2b") / "qwen3vl_2b_l2"
    assert main(["tiny-vlm", str(out), "--preset", "qwen3-vl-2b", "--num_layers", "2", "--vision_depth", "2"]) == 0
    return out


def test_preset_has_the_real_config(qwen3vl_2b_shallow):
    cfg = json.loads((qwen3vl_2b_shallow / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert (text["hidden_size"], text["intermediate_size"], text["num_attention_heads"], text["num_key_value_heads"],
            text["head_dim"], text["vocab_size"], text["num_hidden_layers"]) == (2048, 6144, 16, 8, 128, 151936, 2)
    assert text["rope_parameters"]["mrope_section"] == [24, 20, 20] and text["rope_parameters"]["rope_theta"] == 5e6
    assert (vision["depth"], vision["hidden_size"], vision["num_heads"], vision["intermediate_size"],
            vision["num_position_embeddings"], vision["out_hidden_size"]) == (2, 1024, 16, 4096, 2304, 2048)
    assert vision["deepstack_visual_indexes"] == [0, 1]  # [5, 11, 17] of 24 blocks, moved to the same relative depth
    assert cfg["tie_word_embeddings"] is True and cfg["dtype"] == "bfloat16"


@pytest.mark.slow
@pytest.mark.parametrize("vla_id", VLA_IDS)
def test_variant_at_full_width(qwen3vl_2b_shallow, vla_data_root, tokenizer_ckpt, tmp_path, capsys, vla_id):
    from latentvla.data.dataset import VLADataset
    from latentvla.vla.policy import VLAPolicy

    latent = vla_id in ("la_align", "la_direct", "la_cond")
    flags = ["--vla_id", vla_id, "--vlm_path", str(qwen3vl_2b_shallow), "--data_root_dir", str(vla_data_root),
             "--data_mix", "libero_goal", "--run_root_dir", str(tmp_path / "runs"), "--run_id", "r",
             "--per_device_batch_size", "1", "--max_steps", "1", "--save_step", "1", "--image_aug", "False",
             "--num_workers", "0", "--progress", "False"]
    if vla_id == "la_tok":
        flags += ["--action_tokenizer_ckpt", str(tokenizer_ckpt)]
    assert main(["train", *flags]) == 0
    out = capsys.readouterr().out
    assert "action head" in out and "policy weights" in out  # the parameter report at start
    ckpt = tmp_path / "runs" / "r" / "checkpoints" / "step_1"
    rec = json.loads((tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(rec["loss"]) and rec["grad_norm"] < 1e3

    policy = VLAPolicy.from_pretrained(ckpt, device="cpu")
    model = policy.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (ckpt / "model.safetensors").stat().st_size < 4 * trainable + 1_000_000  # no frozen backbone inside
    assert (ckpt / "training_state.pt").is_file()
    head = sum(p.numel() for p in model.action_head.parameters())
    assert model.action_head.chunk_queries.shape[1] == 512 and head < 20e6  # H/4, 2 blocks (one per LLM layer)

    ds = VLADataset(vla_data_root, "libero_goal_latent" if latent else "libero_goal", image_size=224, image_aug=False,
                    extra_keys=model.required_sample_keys(), progress=False)
    s = ds[3]
    if vla_id == "la_tok":  # the training forward encodes the target chunk (inference never needs the tokenizer)
        from latentvla.lam.action_tokenizer import ActionChunkTokenizer

        model.set_action_tokenizer(ActionChunkTokenizer.from_checkpoint(tokenizer_ckpt))
    with torch.no_grad():
        train_forward = model(model.processor.collate([s]))  # the training path, labels and all
    assert np.isfinite(float(train_forward["loss"]))
    stats = ds.statistics["libero_goal_no_noops"]
    raw_proprio = unnormalize(s["proprio"], stats["proprio"], LIBERO.proprio_norm_mask, LIBERO.normalization)
    chunk = policy.predict_action(list(s["images"]), s["instruction"], raw_proprio)
    expected = unnormalize(train_forward["actions"][0].numpy(), stats["action"], LIBERO.action_norm_mask,
                           LIBERO.normalization)
    np.testing.assert_allclose(chunk, expected, atol=1e-4)
