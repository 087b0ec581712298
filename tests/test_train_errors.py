"""`latentvla train`: every bad input is one clear error (exit 2) before any heavy work — nothing
is written to the run root, no backbone is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentvla.cli import main
from latentvla.errors import LatentVLAError
from latentvla.train.configuration_train import TrainConfig
from latentvla.vla.configuration_vla import STRATEGIES, VLA_IDS


def test_train_accepts_exactly_the_registered_variants():
    for vla_id in STRATEGIES:
        TrainConfig(vla_id=vla_id, vlm_path="x", data_root_dir="y").validate()
    with pytest.raises(LatentVLAError, match="--vla_id 'la_magic' is unknown"):
        TrainConfig(vla_id="la_magic", vlm_path="x", data_root_dir="y").validate()


@pytest.fixture(scope="module")
def plain_data_root(tmp_path_factory) -> Path:
    """Unannotated LIBERO-layout data with no `_latent` sibling."""
    from latentvla.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("plain_data")
    write_synthetic_dataset(root, "libero_goal_no_noops", num_episodes=2, steps=9, image_size=32)
    return root


@pytest.fixture(scope="module")
def wrong_tokenizer(tmp_path_factory) -> Path:
    """An action tokenizer checkpoint for 4-dim actions (LIBERO has 7)."""
    from conftest import write_tiny_tokenizer

    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok"), 4, 8, None)


def _run(capsys, tmp_path, vlm, data, *extra) -> str:
    runs = tmp_path / "runs"
    argv = ["train", "--vlm_path", str(vlm), "--data_root_dir", str(data), "--data_mix", '["libero_goal"]',
            "--run_root_dir", str(runs), "--max_steps", "1", *map(str, extra)]
    assert main(argv) == 2
    assert not runs.exists(), "the error must come before anything is written"
    err = capsys.readouterr().err
    assert err.startswith("latentvla train: error:") and "Traceback" not in err
    return err


def test_unknown_vla_id_lists_the_ids(capsys, tmp_path, tiny_vlm_dir, plain_data_root):
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--vla_id", "la_magic")
    assert "la_magic" in err and all(v in err for v in VLA_IDS)


def test_global_batch_not_divisible(capsys, tmp_path, tiny_vlm_dir, plain_data_root, monkeypatch):
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--global_batch_size", "6", "--per_device_batch_size",
               "4")
    assert "--global_batch_size 6" in err and "multiple of 4" in err
    monkeypatch.setenv("WORLD_SIZE", "2")  # 8 = 2 per device x 2 ranks x 2 accumulation is fine; 6 is not
    TrainConfig(vlm_path="x", data_root_dir="y", global_batch_size=8, per_device_batch_size=2).validate()
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--global_batch_size", "6", "--per_device_batch_size",
               "2")
    assert "world size 2" in err


def test_window_size_must_equal_chunk_length(capsys, tmp_path, tiny_vlm_dir, plain_data_root):
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--window_size", "5")
    assert "--window_size 5" in err and "chunk length 8" in err and "libero" in err


@pytest.mark.parametrize("vla_id", ["la_align", "la_direct", "la_cond"])
def test_latent_variant_needs_annotated_data(capsys, tmp_path, tiny_vlm_dir, plain_data_root, vla_id):
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--vla_id", vla_id)
    assert "latent_idx" in err and "libero_goal_no_noops" in err and "lam annotate" in err


def test_la_tok_tokenizer_checks(capsys, tmp_path, tiny_vlm_dir, plain_data_root, wrong_tokenizer):
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--vla_id", "la_tok")
    assert "--action_tokenizer_ckpt" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--vla_id", "la_tok", "--action_tokenizer_ckpt",
               tmp_path / "missing.pt")
    assert "missing.pt" in err and "not found" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--vla_id", "la_tok", "--action_tokenizer_ckpt",
               wrong_tokenizer)
    assert "--action_tokenizer_ckpt" in err and "4" in err and "7" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--vla_id", "la_tok", "--action_tokenizer_ckpt", junk)
    assert "junk.pt" in err


def test_vlm_path_must_be_qwen3vl(capsys, tmp_path, plain_data_root):
    err = _run(capsys, tmp_path, tmp_path / "nope", plain_data_root)
    assert "--vlm_path" in err and "not found" in err
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    err = _run(capsys, tmp_path, other, plain_data_root)
    assert "'llama'" in err and "qwen3_vl" in err


def test_other_bad_inputs(capsys, tmp_path, tiny_vlm_dir, plain_data_root):
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--data_mix", "libero_nope")
    assert "libero_nope" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, tmp_path / "no_data")
    assert "--data_root_dir" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--robot", "aloha")
    assert "--robot 'aloha'" in err and "libero" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--from_pretrained", "True")
    assert "--pretrained_checkpoint" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--from_pretrained", "True", "--pretrained_checkpoint",
               tmp_path)
    assert "--pretrained_checkpoint" in err and "model.safetensors" in err
    import torch
    from safetensors.torch import save_file

    from latentvla.vla.checkpoint import MERGED_FORMAT

    merged = tmp_path / "run" / "merged"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(merged / "model.safetensors"), metadata={"format": MERGED_FORMAT})
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--from_pretrained", "True", "--pretrained_checkpoint",
               merged)
    assert "--merge_lora export" in err and "checkpoints/step_N" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--lr_scheduler_type", "cosine")
    assert "linear-warmup+cosine-decay" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--merge_lora", "True", "--save_checkpoint", "False")
    assert "--merge_lora" in err
    err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--default_image_size", "100")
    assert "multiple of 32" in err


def test_batch_larger_than_data_leaves_no_run_dir(capsys, tmp_path, tiny_vlm_dir, plain_data_root):
    """Fails after the model is built (the trainer's check): the run dir it created is removed."""
    runs = tmp_path / "runs"
    argv = ["train", "--vlm_path", str(tiny_vlm_dir), "--data_root_dir", str(plain_data_root), "--data_mix",
            "libero_goal", "--run_root_dir", str(runs), "--max_steps", "1", "--per_device_batch_size", "100000",
            "--global_batch_size", "100000", "--lora_rank", "4", "--num_workers", "0"]
    assert main(argv) == 2
    assert "--per_device_batch_size 100000" in capsys.readouterr().err
    assert not runs.exists()


def test_tokenizer_statistics_mismatch():
    from latentvla.train.preflight import tokenizer_statistics_mismatch

    data = {"a": {"action": {"q01": [0.0, -1.0], "q99": [1.0, 1.0], "mask": [True, True]}},
            "b": {"action": {"q01": [0.0], "q99": [1.0]}}}
    same = {"a": {"action": {"q01": [0.0, -1.0], "q99": [1.0, 1.0000001]}}}
    assert tokenizer_statistics_mismatch(same, data) == []
    assert tokenizer_statistics_mismatch({}, data) == []  # nothing saved for these datasets: nothing to compare
    other = {"a": {"action": {"q01": [0.0, -2.0], "q99": [1.0, 1.0]}}, "b": {"action": {"q01": [0.0, 0.0]}},
             "c": {"action": {"q01": [5.0]}}}
    assert tokenizer_statistics_mismatch(other, data) == ["a", "b"]


def test_missing_logger_backend_or_device(capsys, tmp_path, tiny_vlm_dir, plain_data_root, monkeypatch):
    import importlib.util

    import torch

    if importlib.util.find_spec("wandb") is None:
        err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--use_wandb", "True")
        assert "wandb" in err and "pip install" in err
    if importlib.util.find_spec("swanlab") is None:
        monkeypatch.setenv("ENABLE_SWANLAB", "1")
        err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root)
        assert "swanlab" in err
        monkeypatch.delenv("ENABLE_SWANLAB")
    if not torch.cuda.is_available():
        err = _run(capsys, tmp_path, tiny_vlm_dir, plain_data_root, "--device", "cuda")
        assert "CUDA" in err


PAPER_FLAGS = """seed run_root_dir save_checkpoint vla_id vlm_path vlm_model_id default_image_size data_root_dir
data_mix shuffle_buffer_size image_aug window_size use_wrist_image use_proprio use_pro_version num_images_in_input
action_tokenizer_ckpt codebook_size use_latent type epochs max_steps global_batch_size per_device_batch_size
learning_rate weight_decay max_grad_norm lr_scheduler_type warmup_ratio save_step token_loss_weight use_val
wandb_project use_wandb pretrained_checkpoint from_pretrained""".split()
OUR_FLAGS = ("strategy resume gradient_checkpointing lora_rank num_workers robot keep_checkpoints merge_lora "
             "dataset_registry").split()


def test_every_paper_flag_is_accepted():
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(PAPER_FLAGS + OUR_FLAGS) <= names, set(PAPER_FLAGS + OUR_FLAGS) - names
