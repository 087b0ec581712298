"""Shared test fixtures.

Tests build tiny random models through the same code paths that load the real ones, and write
small datasets in the real on-disk formats. Keep each test fast: the whole suite must stay well
under 15 minutes on 2 CPU cores (CI runs `pytest -n 2`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    # Tiny models on a 2-core machine (one core per xdist worker): one intra-op thread is faster and
    # immune to a busy machine; with more threads tiny-model tests crawl (measured up to 30x slower).
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tfds_fixture_root(tmp_path: Path) -> Path:
    """A writable copy of the TFDS-written LIBERO-layout dataset (data root dir)."""
    dst = tmp_path / "tfds_root"
    shutil.copytree(FIXTURES / "tfds_written", dst)
    return dst


@pytest.fixture
def lerobot_root(tmp_path: Path) -> Path:
    """A writable data root holding copies of the three lerobot-written datasets (v3.0 AV1
    `libero_tiny_lerobot`, v3.0 H.264 `libero_tiny_lerobot_h264`, v2.1 AV1 `libero_tiny_lerobot_v21`)."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("av")
    dst = tmp_path / "lerobot_root"
    dst.mkdir()
    for d in (FIXTURES / "lerobot_written").iterdir():
        if d.is_dir():
            shutil.copytree(d, dst / d.name)
    return dst


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL checkpoint dir (hidden 64, 2 layers, vision depth 2), written once
    per session by `latentvla tiny-vlm`'s code path. Read-only: copy it before modifying."""
    from latentvla.vla.configuration_tiny import TinyVLMConfig
    from latentvla.vla.tiny import write_tiny_vlm

    out = tmp_path_factory.mktemp("tiny_vlm") / "qwen3vl_tiny"
    write_tiny_vlm(TinyVLMConfig(out_dir=str(out)))
    return out


def write_tiny_tokenizer(directory: Path, action_dim: int, codebook_size: int, platform: dict | None) -> Path:
    """A tiny random action tokenizer checkpoint (chunk 8) in the real file format."""
    import torch

    from latentvla.lam.action_tokenizer import ActionTokenizerModel
    from latentvla.lam.action_tokenizer_checkpoint import save_tokenizer_checkpoint
    from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig

    torch.manual_seed(0)
    cfg = ActionTokenizerConfig(action_dim=action_dim, chunk_len=8, hidden_dim=16, codebook_size=codebook_size,
                                num_heads=2, ffn_dim=32, decoder_hidden_dim=16)
    return save_tokenizer_checkpoint(directory / "tokenizer_step_1.pt", ActionTokenizerModel(cfg), step=1,
                                     statistics={}, platform=platform)


@pytest.fixture(scope="module")
def tokenizer_ckpt(tmp_path_factory) -> Path:
    """A tiny random action tokenizer checkpoint for LIBERO (P 8, D 7, 32 codes)."""
    from latentvla.robots import get_platform

    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok"), 7, 32, get_platform("libero").to_dict())


@pytest.fixture
def libero_config_dir(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path / "libero_config"))
    return tmp_path / "libero_config"


@pytest.fixture(scope="session")
def vla_data_root(tmp_path_factory) -> Path:
    """Synthetic LIBERO-layout RLDS data (64 px): `libero_goal_no_noops` (3 episodes, unannotated)
    and its annotated copy `libero_goal_no_noops_latent` (latent_idx int64 [4] in [0, 16),
    latent_z float32 [4, 128]), written through the data writer. Read-only."""
    import numpy as np

    from latentvla.data.features import tensor_feature
    from latentvla.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("vla_data")
    write_synthetic_dataset(root, "libero_goal_no_noops", num_episodes=3, steps=[12, 10, 9], image_size=64)

    def latent(e, t):
        rng = np.random.default_rng(1000 * e + t)
        return {"latent_idx": rng.integers(0, 16, 4).astype(np.int64),
                "latent_z": rng.normal(size=(4, 128)).astype(np.float32)}

    feats = {"latent_idx": tensor_feature((4,), "int64"), "latent_z": tensor_feature((4, 128))}
    write_synthetic_dataset(root, "libero_goal_no_noops_latent", num_episodes=3, steps=[12, 10, 9], image_size=64,
                            layout="libero", extra_step_features=feats, extra_fn=latent)
    return root
