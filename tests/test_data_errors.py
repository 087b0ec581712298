"""Bad inputs (issue 3) through the dataset API and the `latentvla data` CLI: one clear message, exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latentvla.cli import main
from latentvla.data.dataset import VLADataset
from latentvla.data.synthetic import synthetic_features, write_synthetic_dataset
from latentvla.data.tfds import TFDSBuilderDir, TFDSWriter
from latentvla.errors import LatentVLAError


def cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _root(tmp_path, **kw):
    kw = {"num_episodes": 2, "steps": 6, "image_size": 24, **kw}
    write_synthetic_dataset(tmp_path, "libero_goal_no_noops", **kw)
    return tmp_path


def _shard(root):
    return TFDSBuilderDir(root / "libero_goal_no_noops" / "1.0.0").shard_paths("train")[0]


def test_cli_on_tfds_written_dataset(capsys, tfds_fixture_root):
    rc, out, _ = cli(capsys, "data", "stats", "--data_root_dir", str(tfds_fixture_root), "--data_mix",
                     "libero_tiny_no_noops")
    stats = json.loads(out)["libero_tiny_no_noops"]
    assert rc == 0 and stats["num_trajectories"] == 4 and stats["num_transitions"] == 20
    for key in ("mean", "std", "min", "max", "q01", "q99"):
        assert len(stats["action"][key]) == 7 and len(stats["proprio"][key]) == 8
    # fixture: action = (arange(7) + 10 t) / 100, gripper raw 0.06 + 0.1 t -> clipped + inverted
    assert stats["action"]["min"][0] == pytest.approx(0.0) and stats["action"]["max"][0] == pytest.approx(0.5)
    rc, out, _ = cli(capsys, "data", "inspect", "--data_root_dir", str(tfds_fixture_root), "--data_mix",
                     '["libero_tiny"]', "--episode", "2")
    info = json.loads(out)["libero_tiny"]
    assert rc == 0 and info["num_episodes"] == 4 and sorted(e["length"] for e in info["episodes"]) == [4, 5, 5, 6]
    assert all(e["instruction"] for e in info["episodes"])
    ep = info["episode"]
    assert len(ep["actions"]) == ep["length"] and len(ep["actions"][0]) == 7 and len(ep["proprio"][0]) == 8
    assert ep["image_shapes"] == {"observation/image": [256, 256, 3], "observation/wrist_image": [256, 256, 3]}


def test_missing_root_version_and_unknown_name(capsys, tmp_path):
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(tmp_path / "nope"), "--data_mix", "libero_goal")
    assert rc == 2 and "not found" in err and err.count("\n") == 1
    _root(tmp_path)
    shutil.move(tmp_path / "libero_goal_no_noops" / "1.0.0", tmp_path / "libero_goal_no_noops" / "x")
    rc, _, err = cli(capsys, "data", "inspect", "--data_root_dir", str(tmp_path), "--data_mix", "libero_goal")
    assert rc == 2 and "no version directory" in err
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(tmp_path), "--data_mix", "libero_gaol")
    assert rc == 2 and "unknown dataset or mixture 'libero_gaol'" in err and "libero_goal" in err and "jaka" in err
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(tmp_path))
    assert rc == 2 and "--data_mix is required" in err


def test_features_json_missing_or_lacking_key(capsys, tmp_path):
    root = _root(tmp_path)
    d = root / "libero_goal_no_noops" / "1.0.0"
    feats = json.loads((d / "features.json").read_text())
    (d / "features.json").unlink()
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(root), "--data_mix", "libero_goal")
    assert rc == 2 and "features.json not found" in err
    del feats["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]["observation"][
        "featuresDict"]["features"]["wrist_image"]
    (d / "features.json").write_text(json.dumps(feats))
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(root), "--data_mix", "libero_goal")
    assert rc == 2 and "features.json" in err and "no step feature 'wrist_image'" in err


def test_flipped_byte_and_truncated_shard(capsys, tmp_path):
    root = _root(tmp_path)
    shard = _shard(root)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    shard.write_bytes(bytes(raw))
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(root), "--data_mix", "libero_goal")
    assert rc == 2 and str(shard) in err and "offset" in err and "CRC32C mismatch" in err
    raw[len(raw) // 2] ^= 0x40
    shard.write_bytes(bytes(raw[:-100]))
    with pytest.raises(LatentVLAError, match=r"truncated TFRecord at offset \d+"):
        VLADataset(root, "libero_goal", progress=False)


def test_dim_mismatch_with_platform(capsys, tmp_path):
    _root(tmp_path)
    reg = tmp_path / "reg.yaml"
    reg.write_text("datasets:\n  - {name: libero_goal_no_noops, platform: aloha, image_keys: [image]}\n")
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(tmp_path), "--data_mix", "libero_goal_no_noops",
                     "--dataset_registry", str(reg))
    assert rc == 2 and "'action' has shape [7] but platform 'aloha' expects action_dim 14" in err
    reg.write_text("datasets:\n  - {name: libero_goal_no_noops, platform: libero, image_keys: [image], "
                   "proprio_keys: [state]}\n  - {name: x, platform: libero, image_keys: [image], proprio_keys: "
                   "['state[:6]']}\n")
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(tmp_path), "--data_mix", "libero_goal_no_noops",
                     "--dataset_registry", str(reg))
    assert rc == 0  # state (8) fits libero
    shutil.copytree(tmp_path / "libero_goal_no_noops", tmp_path / "x")
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(tmp_path), "--data_mix", "x", "--dataset_registry",
                     str(reg))
    assert rc == 2 and "gives 6 dims but platform 'libero' expects proprio_dim 8" in err


def test_nan_in_actions(capsys, tmp_path):
    def actions(e, t, T, rng):
        a = np.zeros(7, np.float32)
        if e == 1 and t == 3:
            a[2] = np.nan
        return a

    root = _root(tmp_path, action_fn=actions)
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", str(root), "--data_mix", "libero_goal")
    assert rc == 2 and "episode 1" in err and "action has NaN/inf at step 3" in err


def test_empty_dataset(capsys, tmp_path):
    with TFDSWriter(tmp_path / "libero_goal_no_noops" / "1.0.0", synthetic_features("libero", 16)):
        pass
    rc, _, err = cli(capsys, "data", "inspect", "--data_root_dir", str(tmp_path), "--data_mix", "libero_goal")
    assert rc == 2 and "is empty" in err
    with pytest.raises(LatentVLAError, match="has no split 'val'"):
        _root(tmp_path / "b")
        VLADataset(tmp_path / "b", "libero_goal", split="val", progress=False)


def test_undecodable_image_bytes(capsys, tmp_path):
    src = TFDSBuilderDir(_root(tmp_path / "src") / "libero_goal_no_noops" / "1.0.0")
    out = tmp_path / "dst" / "libero_goal_no_noops" / "1.0.0"
    with TFDSWriter(out, src.features) as w:
        for i, ep in enumerate(src.iter_episodes()):
            if i == 1:
                ep["observation/wrist_image"][4] = b"\x00not an image"
            w.add_episode(ep)
    ds = VLADataset(tmp_path / "dst", "libero_goal", image_size=16, progress=False)
    ds[0]
    with pytest.raises(LatentVLAError, match=r"episode 1 step 4 camera 'observation/wrist_image': cannot decode image"):
        ds[10]
    rc, _, err = cli(capsys, "data", "inspect", "--data_root_dir", str(tmp_path / "dst"), "--data_mix", "libero_goal",
                     "--episode", "1")
    assert rc == 2 and "episode 1 step 4" in err and "cannot decode image" in err


def test_too_few_cameras_for_platform(tmp_path):
    _root(tmp_path)
    reg = tmp_path / "reg.yaml"
    reg.write_text("datasets:\n  - {name: libero_goal_no_noops, platform: libero, image_keys: [image], "
                   "proprio_keys: ['state'], action_standardization: libero_gripper}\n")
    with pytest.raises(LatentVLAError, match="lists 1 camera.*platform 'libero' uses 2.*use_wrist_image False"):
        VLADataset(tmp_path, "libero_goal_no_noops", dataset_registry=reg, progress=False)
    ds = VLADataset(tmp_path, "libero_goal_no_noops", dataset_registry=reg, use_wrist_image=False, image_size=16,
                    progress=False)
    assert ds[0]["images"].shape == (1, 16, 16, 3)
