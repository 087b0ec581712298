"""The dataset's registry entry decides the platform (action dim, chunk length), never a substring of
a path or of the command line as in the reference code (docs/architecture.md, known pitfall 16).
Every path here (data root, registry file, run root, backbone dir) and the registered dataset's own
name contain "bridge", "aloha" and "libero"."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from latentvla.cli import main
from latentvla.config import parse_config
from latentvla.robots import get_platform
from latentvla.train.configuration_train import TrainConfig
from latentvla.train.preflight import preflight

ARM = "bridge_libero_aloha_arm"  # registered with its own platform: chunk 3, 14-dim actions
REGISTRY = f"""\
datasets:
  - name: {ARM}
    platform: {{name: p16_twin_arm, chunk_len: 3, action_dim: 14, proprio_dim: 14, num_cameras: 2}}
    image_keys: [image, left_wrist_image]
    proprio_keys: [state]
"""


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_vlm_dir) -> dict[str, Path]:
    from latentvla.data.synthetic import write_synthetic_dataset

    base = tmp_path_factory.mktemp("p16") / "bridge_aloha_libero"
    data = base / "aloha_bridge_libero_data"
    write_synthetic_dataset(data, "libero_goal_no_noops", num_episodes=2, steps=9, image_size=32)
    write_synthetic_dataset(data, ARM, num_episodes=2, steps=9, image_size=32, layout="aloha")
    registry = base / "bridge_aloha_registry.yaml"
    registry.write_text(REGISTRY)
    vlm = base / "libero_bridge_aloha_qwen3vl"
    vlm.symlink_to(tiny_vlm_dir, target_is_directory=True)
    return {"data": data, "registry": registry, "vlm": vlm, "runs": base / "aloha_libero_bridge_runs"}


def _argv(paths, data_mix: str) -> list[str]:
    return ["--vla_id", "baseline", "--vlm_path", str(paths["vlm"]), "--data_root_dir", str(paths["data"]),
            "--data_mix", data_mix, "--dataset_registry", str(paths["registry"]), "--run_root_dir", str(paths["runs"]),
            "--default_image_size", "32", "--max_steps", "1", "--per_device_batch_size", "1", "--lora_rank", "2",
            "--num_workers", "0", "--progress", "False", "--image_aug", "False"]


@pytest.mark.parametrize("data_mix, expected, chunk_len, action_dim",
                         [("libero_goal", "libero", 8, 7), (ARM, "p16_twin_arm", 3, 14)])
def test_registry_entry_decides_the_platform(paths, monkeypatch, data_mix, expected, chunk_len, action_dim):
    argv = _argv(paths, data_mix)
    monkeypatch.setattr(sys, "argv", ["latentvla", "train", *argv])  # what a command-line sniffer would search
    pre = preflight(parse_config(TrainConfig, argv))
    assert pre.platform == get_platform(expected)
    assert (pre.platform.chunk_len, pre.platform.action_dim) == (chunk_len, action_dim)


def test_one_train_step_uses_the_registered_platform(paths, monkeypatch, capsys):
    argv = ["train", *_argv(paths, ARM)]
    monkeypatch.setattr(sys, "argv", ["latentvla", *argv])
    assert main(argv) == 0
    (run,) = [p for p in paths["runs"].iterdir() if p.is_dir()]
    ckpt = run / "checkpoints" / "step_1"
    platform = json.loads((ckpt / "config.json").read_text())["platform"]
    assert (platform["name"], platform["chunk_len"], platform["action_dim"]) == ("p16_twin_arm", 3, 14)
    from latentvla.vla.policy import VLAPolicy

    policy = VLAPolicy.from_pretrained(ckpt, device="cpu")
    chunk = policy.predict_action([np.zeros((32, 32, 3), np.uint8)] * 2, "lift the pot", np.zeros(14, np.float32))
    assert chunk.shape == (3, 14)
