"""Dataset registry: built-ins, aliases, mixtures, annotated copies, user registry files."""

from __future__ import annotations

import json

import pytest

from latentvla.data.registry import ROBOTWIN_TASKS, Registry, get_entry, parse_data_mix, resolve_data_mix
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.errors import LatentVLAError


def test_builtin_entries():
    for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
        a, b = get_entry(suite), get_entry(f"{suite}_no_noops")
        assert a == b and a.name == f"{suite}_no_noops" and a.platform.name == "libero"
        assert a.image_keys == ("image", "wrist_image") and a.action_standardization == "libero_gripper"
    assert len(ROBOTWIN_TASKS) == 12
    e = get_entry("aloha_lift_pot")
    assert e.platform.action_dim == 14 and e.image_keys[0] == "image" and len(e.image_keys) == 3
    assert get_entry("aloha_some_new_task").platform_name == "aloha"  # pattern
    assert get_entry("wipe").platform_name == "jaka"
    assert get_entry("wipe").image_keys == ("head_camera_image", "low_cam_image")
    assert [e.name for e, _ in Registry().expand("jaka")] == ["2_bowls", "3_bowls", "4_bowls", "wipe"]
    assert get_entry("metaworld_reach-v3").platform_name == "metaworld"
    lat = get_entry("libero_goal_latent")
    assert lat.annotated and lat.name == "libero_goal_no_noops" and lat.directories[0] == "libero_goal_no_noops_latent"


def test_parse_data_mix_forms():
    assert parse_data_mix("libero_goal") == [("libero_goal", 1.0)]
    assert parse_data_mix('["a", "b"]') == [("a", 1.0), ("b", 1.0)]
    assert parse_data_mix('[["a", 2], ["b", 0.5]]') == [("a", 2.0), ("b", 0.5)]
    for bad in ("", "[1, 2]", '[["a", -1]]', "[not json"):
        with pytest.raises(LatentVLAError, match="data_mix"):
            parse_data_mix(bad)


def test_resolve_aliases_versions_and_missing_dirs(tmp_path):
    write_synthetic_dataset(tmp_path, "libero_goal_no_noops", num_episodes=1, steps=3, image_size=16)
    (r,) = resolve_data_mix(tmp_path, '["libero_goal"]')
    assert r.path == tmp_path / "libero_goal_no_noops" / "1.0.0" and r.name == "libero_goal_no_noops"
    write_synthetic_dataset(tmp_path, "libero_goal_no_noops", num_episodes=1, steps=3, image_size=16, version="1.2.0")
    assert resolve_data_mix(tmp_path, "libero_goal")[0].path.name == "1.2.0"  # highest version
    with pytest.raises(LatentVLAError, match="data_root_dir.*not found"):
        resolve_data_mix(tmp_path / "nope", "libero_goal")
    with pytest.raises(LatentVLAError, match="no directory 'libero_10_no_noops' or 'libero_10'"):
        resolve_data_mix(tmp_path, "libero_10")
    (tmp_path / "libero_object_no_noops").mkdir()
    with pytest.raises(LatentVLAError, match="no version directory"):
        resolve_data_mix(tmp_path, "libero_object")
    with pytest.raises(LatentVLAError, match=r"unknown dataset or mixture 'bogus'; known: .*jaka.*libero_goal"):
        resolve_data_mix(tmp_path, '["libero_goal", "bogus"]')


def test_user_registry_file(tmp_path):
    write_synthetic_dataset(tmp_path, "my_robot_dir", num_episodes=1, steps=3, image_size=16, layout="jaka")
    reg = tmp_path / "reg.yaml"
    reg.write_text(
        "datasets:\n"
        "  - name: my_robot\n"
        "    directory: my_robot_dir\n"
        "    platform: {name: my_arm, chunk_len: 4, action_dim: 7, proprio_dim: 5}\n"
        "    image_keys: [head_camera_image]\n"
        "    proprio_keys: ['state[:5]']\n"
        "mixtures:\n"
        "  my_mix: [[my_robot, 2.0]]\n")
    (r,) = resolve_data_mix(tmp_path, "my_mix", registry_file=reg)
    assert r.name == "my_robot" and r.weight == 2.0 and r.entry.platform.chunk_len == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"datasets": [{"name": "x", "platform": "libero"}]}))
    with pytest.raises(LatentVLAError, match="bad.json.*lacks key.*image_keys"):
        resolve_data_mix(tmp_path, "x", registry_file=bad)
    bad.write_text(json.dumps({"datasets": [{"name": "x", "platform": "nope", "image_keys": ["image"]}]}))
    with pytest.raises(LatentVLAError, match="unknown robot platform 'nope'"):
        resolve_data_mix(tmp_path, "x", registry_file=bad)
    with pytest.raises(LatentVLAError, match="registry.*not found"):
        resolve_data_mix(tmp_path, "x", registry_file=tmp_path / "missing.yaml")
