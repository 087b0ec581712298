"""Options of the `latentvla data ...` commands (light module: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from latentvla.config import arg
from latentvla.errors import LatentVLAError


@dataclass
class DataStatsConfig:
    """Print per-dataset statistics of a data mix as JSON (computed once, then cached)."""

    data_root_dir: str = arg("", "Directory holding <name>/<version>/ TFDS builder dirs or "
                                 "<name>/ LeRobot dataset dirs.")
    data_mix: str = arg("", "Mixture name, dataset name, or JSON list of names (e.g. '[\"libero_goal\"]').")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering extra datasets / mixtures.")
    split: str = arg("train", "Split to compute statistics over.")

    def validate(self) -> None:
        _require(self.data_root_dir, self.data_mix)


@dataclass
class DataInspectConfig:
    """Print a data mix's episodes as JSON: count, every episode's length and instruction, and for
    `--episode K` its actions, proprio and image shapes."""

    data_root_dir: str = arg("", "Directory holding <name>/<version>/ TFDS builder dirs or "
                                 "<name>/ LeRobot dataset dirs.")
    data_mix: str = arg("", "Mixture name, dataset name, or JSON list of names.")
    episode: int | None = arg(None, "Also print this episode's actions, proprio and image shapes.")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering extra datasets / mixtures.")
    split: str = arg("train", "Split to inspect.")

    def validate(self) -> None:
        _require(self.data_root_dir, self.data_mix)
        if self.episode is not None and self.episode < 0:
            raise LatentVLAError(f"--episode must be >= 0, got {self.episode}")


@dataclass
class DataDeclareLatentsConfig:
    """Declare in features.json the latent labels (steps/latent_idx, steps/latent_z) that a dataset's
    records carry but its features.json lacks, as the paper's latent.py leaves them; written atomically."""

    dataset_dir: str = arg(help="Dataset version directory <root>/<name>/<version> (or <root>/<name> "
                                "holding one version).",
                           positional=True)
    num_codes: int | None = arg(None, "C, codes per step (default: latent_annotation.json, else latent_idx's values "
                                      "per step, else 4).")
    latent_dim: int | None = arg(None, "Z, code vector size (default: latent_annotation.json, else latent_z's values "
                                       "per step / C, else 128).")
    codebook_size: int | None = arg(None, "K: the codes must lie in [0, K) (default: latent_annotation.json, else 16).")

    def validate(self) -> None:
        for name in ("num_codes", "latent_dim", "codebook_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise LatentVLAError(f"--{name} must be >= 1, got {v}")


def _require(root: str, mix: str) -> None:
    if not root:
        raise LatentVLAError("--data_root_dir is required")
    if not mix:
        raise LatentVLAError("--data_mix is required (a dataset or mixture name, or a JSON list of names)")
