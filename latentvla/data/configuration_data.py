"""Options of the `latentvla data ...` commands (light module: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from latentvla.config import arg
from latentvla.errors import LatentVLAError


@dataclass
class DataStatsConfig:
    """Print per-dataset statistics of a data mix as JSON (computed once, then cached)."""

    data_root_dir: str = arg("", "Directory holding <name>/<version>/ TFDS builder dirs.")
    data_mix: str = arg("", "Mixture name, dataset name, or JSON list of names (e.g. '[\"libero_goal\"]').")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering extra datasets / mixtures.")
    split: str = arg("train", "Split to compute statistics over.")

    def validate(self) -> None:
        _require(self.data_root_dir, self.data_mix)


@dataclass
class DataInspectConfig:
    """Print a data mix's episodes as JSON: count, every episode's length and instruction, and for
    `--episode K` its actions, proprio and image shapes."""

    data_root_dir: str = arg("", "Directory holding <name>/<version>/ TFDS builder dirs.")
    data_mix: str = arg("", "Mixture name, dataset name, or JSON list of names.")
    episode: int | None = arg(None, "Also print this episode's actions, proprio and image shapes.")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering extra datasets / mixtures.")
    split: str = arg("train", "Split to inspect.")

    def validate(self) -> None:
        _require(self.data_root_dir, self.data_mix)
        if self.episode is not None and self.episode < 0:
            raise LatentVLAError(f"--episode must be >= 0, got {self.episode}")


def _require(root: str, mix: str) -> None:
    if not root:
        raise LatentVLAError("--data_root_dir is required")
    if not mix:
        raise LatentVLAError("--data_mix is required (a dataset or mixture name, or a JSON list of names)")
