"""Helpers shared by the `latentvla lam annotate` tests (RLDS and LeRobot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from image_lam_helpers import TINY

from latentvla.cli import main as cli_main


def write_tiny_lam(root: Path) -> Path:
    """A tiny image-LAM checkpoint `root/lam` (its DINO in `root/dino`), codebook spread so inputs use several codes."""
    from latentvla.lam.configuration_image_lam import ImageLAMConfig
    from latentvla.lam.dino import load_dino
    from latentvla.lam.image_lam import ImageLatentActionModel
    from latentvla.lam.image_lam_checkpoint import save_lam_checkpoint

    assert cli_main(["tiny-dino", str(root / "dino"), "--num_layers", "1"]) == 0
    torch.manual_seed(0)
    model = ImageLatentActionModel(ImageLAMConfig(**TINY), dino=load_dino(root / "dino"))
    with torch.no_grad():
        model.vq_action.codebook.weight.normal_()
    save_lam_checkpoint(root / "lam", model, step=1)
    return root / "lam"


class CrashAfter:
    """Wraps the real labeler; raises on call number `n` (simulates a kill mid-run)."""

    def __init__(self, labeler, n: int | None):
        self.labeler, self.n, self.calls = labeler, n, 0
        self.num_codes, self.latent_dim, self.batch_size = labeler.num_codes, labeler.latent_dim, 10_000

    def label_episodes(self, episodes):
        self.calls += 1
        if self.n is not None and self.calls >= self.n:
            raise KeyboardInterrupt
        return self.labeler.label_episodes(episodes)


def expected_labels(model, images, pair_offset: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(latent_idx, latent_z) the labeler must give an episode's primary-camera `images` (encoded or uint8):
    the label of step t is the pair (t, min(t + pair_offset, T - 1))."""
    from latentvla.lam.latent_labeler import decode_frame

    frames = torch.from_numpy(np.stack([decode_frame(f, 56) for f in images]))
    feats = model.dino_features(frames.permute(0, 3, 1, 2).float() / 255)
    second = np.minimum(np.arange(len(frames)) + pair_offset, len(frames) - 1)
    idx, z = model.encode_latent_actions(torch.stack([feats, feats[second]], 1))
    return idx.numpy(), z.numpy()
