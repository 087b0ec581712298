"""`PolicyIO`: the inference recipe saved with a checkpoint, and derived for checkpoints that predate the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentvla.errors import LatentVLAError
from latentvla.robots import get_platform
from latentvla.vla.policy_io import FILE, load_policy_io, policy_io_from_config


def _stats(d):
    return {"mean": [0.0] * d, "std": [1.0] * d, "min": [-2.0] * d, "max": [2.0] * d, "q01": [-1.0] * d,
            "q99": [1.0] * d, "mask": [True] * d}


def _checkpoint(tmp_path, vla=None, train=None):
    """The two files every policy checkpoint has (config.json, dataset_statistics.json), as an old writer left them."""
    cfg = {"format": "latentvla-policy", "vla": {"vla_id": "baseline", "default_image_size": 64, **(vla or {})},
           "platform": get_platform("libero").to_dict(), "train": train or {}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "dataset_statistics.json").write_text(json.dumps({"a": {"action": _stats(7), "proprio": _stats(8)},
                                                                  "b": {"action": _stats(7)}}))
    return cfg


def test_old_checkpoints_get_the_recipe_from_their_config(tmp_path):
    _checkpoint(tmp_path, {"use_wrist_image": False}, {"image_aug": True})
    io = load_policy_io(tmp_path)
    assert (io.image_size, io.num_images, io.use_proprio, io.center_crop) == (64, 1, True, True)
    assert io.image_resample == "lanczos"  # no image_resample recorded: trained before the option, with Lanczos
    assert io.platform.name == "libero" and sorted(io.statistics) == ["a", "b"]


def test_the_saved_recipe_is_what_loads(tmp_path):
    cfg = _checkpoint(tmp_path, train={"image_resample": "bicubic"})
    saved = policy_io_from_config(cfg, {}).to_json()
    assert saved["num_images"] == 2 and saved["image_resample"] == "bicubic" and not saved["center_crop"]
    (tmp_path / FILE).write_text(json.dumps({**saved, "image_resample": "bilinear", "center_crop": True}))
    io = load_policy_io(tmp_path)
    assert (io.image_resample, io.center_crop) == ("bilinear", True)
    (tmp_path / FILE).write_text(json.dumps({**saved, "image_resample": "nearest"}))
    with pytest.raises(LatentVLAError, match=f"{FILE}: not a latentvla-policy-io file.*image_resample one of bicubic"):
        load_policy_io(tmp_path)
    (tmp_path / FILE).write_text(json.dumps({"format": "latentvla-policy-io", "image_size": 64}))
    with pytest.raises(LatentVLAError, match=f"{FILE}: not a latentvla-policy-io file.*num_images"):
        load_policy_io(tmp_path)


def test_statistics_are_selected_and_applied(tmp_path):
    _checkpoint(tmp_path)
    io = load_policy_io(tmp_path)
    with pytest.raises(LatentVLAError, match="several datasets; pass unnorm_key.*a, b"):
        io.select(None)
    with pytest.raises(LatentVLAError, match="unnorm_key 'c' not in the saved statistics"):
        io.select("c")
    with pytest.raises(LatentVLAError, match="statistics of 'b' lack 'proprio'"):
        io.select("b")
    a = io.select("a")
    assert io.unnorm_key is None and a.unnorm_key == "a"  # a copy: the loaded recipe is not changed
    np.testing.assert_allclose(a.normalize_proprio(np.full(8, 0.5)), 0.5)
    np.testing.assert_allclose(a.unnormalize_actions(np.full((2, 7), -1.0))[:, :6], -1.0)
    with pytest.raises(LatentVLAError, match="proprio has 3 dims, platform 'libero' expects 8"):
        a.normalize_proprio(np.zeros(3))
    frame = np.zeros((96, 80, 3), np.uint8)
    assert [im.shape for im in a.prepare_images([frame, frame])] == [(64, 64, 3)] * 2
