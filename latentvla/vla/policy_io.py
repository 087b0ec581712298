"""`PolicyIO`: a checkpoint's inference-time recipe, from camera frames and raw proprio to robot actions.

Training's image side and resize filter, the center crop standing in for its random crops (image_aug),
the camera count (dataset order: primary first, then wrist), proprio or not, and the normalization
statistics (`{dataset: stats}`) with the dataset chosen to un-normalize (`unnorm_key`). Actions keep the
dataset convention (gripper 1 open, 0 close); simulator adapters convert from there.

`save_policy_checkpoint` writes it as `policy_io.json` (statistics and platform stay in their files);
`load_policy_io(dir)` is its only reader (`VLAPolicy`, `latentvla eval`, `latentvla serve`), deriving it
from config.json for checkpoints written before the file existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.data.transforms import DEFAULT_RESAMPLE, LEGACY_RESAMPLE, RESAMPLE_CHOICES
from latentvla.errors import LatentVLAError
from latentvla.robots import Platform, normalize, unnormalize
from latentvla.utils.json_files import read_json

FILE = "policy_io.json"
FORMAT = "latentvla-policy-io"
RECIPE_KEYS = ("image_size", "image_resample", "center_crop", "num_images", "use_proprio")


def prepare_image(image: Any, size: int | None, center_crop: bool, resample: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """Training's resize (`latentvla.data.transforms.process_image` with the run's filter) to `size` (None: keep
    the side), plus its deterministic center crop for image_aug runs whatever the frame size. Frames already at
    the size without a crop, and anything but uint8 HxWx3 (the model's checks name it), pass through unchanged."""
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8 or not (center_crop or size and image.shape[:2] != (size, size)):
        return image
    from latentvla.data.transforms import center_crop_params, process_image

    return process_image(image, size or image.shape[0], center_crop_params() if center_crop else None, resample)


@dataclass
class PolicyIO:
    platform: Platform
    statistics: dict
    image_size: int
    num_images: int
    use_proprio: bool
    image_resample: str
    center_crop: bool
    unnorm_key: str | None = None  # set by `select`

    def select(self, unnorm_key: str | None, where: str = "policy") -> PolicyIO:
        """A copy bound to one dataset's statistics, checked to hold what the model needs."""
        keys = sorted(self.statistics)
        if not keys:
            raise LatentVLAError(f"{where}: dataset_statistics.json is empty")
        if unnorm_key is None and len(keys) > 1:
            raise LatentVLAError(f"{where} was trained on several datasets; pass unnorm_key (--unnorm_key) = one of: "
                                 f"{', '.join(keys)}")
        if unnorm_key is not None and unnorm_key not in self.statistics:
            raise LatentVLAError(f"{where}: unnorm_key {unnorm_key!r} not in the saved statistics; available: "
                                 f"{', '.join(keys)}")
        key = keys[0] if unnorm_key is None else unnorm_key
        if "action" not in self.statistics[key]:
            raise LatentVLAError(f"{where}: statistics of {key!r} lack 'action'")
        if self.use_proprio and "proprio" not in self.statistics[key]:
            raise LatentVLAError(f"{where}: statistics of {key!r} lack 'proprio' (the model uses proprio)")
        return dataclasses.replace(self, unnorm_key=key)

    @property
    def stats(self) -> dict:
        if self.unnorm_key is None:
            raise LatentVLAError("PolicyIO: no dataset selected (call select(unnorm_key) first)")
        return self.statistics[self.unnorm_key]

    def prepare_images(self, images: Any) -> list[np.ndarray]:
        """Raw camera frames -> images made as training made them (`prepare_image`)."""
        return [prepare_image(im, self.image_size, self.center_crop, self.image_resample) for im in images]

    def normalize_proprio(self, proprio: Any) -> np.ndarray:
        p, platform = np.asarray(proprio, dtype=np.float32), self.platform
        if p.shape[-1] != platform.proprio_dim:
            raise LatentVLAError(f"proprio has {p.shape[-1]} dims, platform {platform.name!r} expects "
                                 f"{platform.proprio_dim}")
        return normalize(p, self.stats["proprio"], platform.proprio_norm_mask, platform.normalization)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return unnormalize(actions, self.stats["action"], self.platform.action_norm_mask, self.platform.normalization)

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": 1, **{k: getattr(self, k) for k in RECIPE_KEYS},
                "camera_order": "primary first, then wrist", "gripper": "dataset: 1 open, 0 close"}


def policy_io_from_config(config: Mapping, statistics: dict, source: str = "config.json") -> PolicyIO:
    """The recipe a checkpoint's config implies (what training writes; the fallback for older checkpoints)."""
    vla, train = config.get("vla") or {}, config.get("train") or {}
    platform = Platform.from_dict(config.get("platform") or {}, source=source)
    num_images = vla.get("num_images_in_input") or (platform.num_cameras if vla.get("use_wrist_image", True) else 1)
    return PolicyIO(platform=platform, statistics=statistics, image_size=int(vla.get("default_image_size", 224)),
                    num_images=int(num_images), use_proprio=bool(vla.get("use_proprio", True)),
                    image_resample=str(train.get("image_resample") or LEGACY_RESAMPLE),
                    center_crop=bool(train.get("image_aug", False)))


def load_policy_io(directory: str | Path) -> PolicyIO:
    """The checkpoint's `PolicyIO`: from its policy_io.json, or derived from its config.json (older checkpoints)."""
    from latentvla.vla.checkpoint import resolve_policy_dir

    directory = resolve_policy_dir(directory)
    missing = "not found (not a policy checkpoint written by latentvla?)"
    config = read_json(directory / "config.json", missing=missing)
    if not isinstance(config, dict):
        raise LatentVLAError(f"{directory / 'config.json'}: expected a JSON object")
    statistics = read_json(directory / "dataset_statistics.json", missing=missing)
    io = policy_io_from_config(config, statistics, source=str(directory / "config.json"))
    if not (directory / FILE).is_file():
        return io
    saved = read_json(directory / FILE)
    absent = [k for k in RECIPE_KEYS if not isinstance(saved, dict) or k not in saved]
    if absent or saved.get("format") != FORMAT or saved["image_resample"] not in RESAMPLE_CHOICES:
        raise LatentVLAError(f"{directory / FILE}: not a {FORMAT} file (needs format, {', '.join(RECIPE_KEYS)}; "
                             f"image_resample one of {', '.join(RESAMPLE_CHOICES)})")
    types = {"image_size": int, "num_images": int, "use_proprio": bool, "image_resample": str, "center_crop": bool}
    return dataclasses.replace(io, **{k: types[k](saved[k]) for k in RECIPE_KEYS})
