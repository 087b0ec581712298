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
    # Under pytest-xdist each worker gets one core; oversubscription makes torch tests crawl.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass


@pytest.fixture
def tfds_fixture_root(tmp_path: Path) -> Path:
    """A writable copy of the TFDS-written LIBERO-layout dataset (data root dir)."""
    dst = tmp_path / "tfds_root"
    shutil.copytree(FIXTURES / "tfds_written", dst)
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
