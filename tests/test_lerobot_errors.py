"""Bad LeRobot input: one LatentVLAError naming the file / field, never a deep traceback."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from lerobot_helpers import data_files, edit_info, rewrite_column

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from latentvla.cli import main  # noqa: E402
from latentvla.data.dataset import VLADataset  # noqa: E402
from latentvla.errors import LatentVLAError  # noqa: E402

V3, V21 = "libero_tiny_lerobot", "libero_tiny_lerobot_v21"
NAMES = (V3, V21)


def _load(root, name, **kw):
    return VLADataset(root, name, image_size=16, progress=False, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_missing_info_json(lerobot_root, name, capsys):
    (lerobot_root / name / "meta" / "info.json").unlink()
    with pytest.raises(LatentVLAError, match=r"meta/info\.json: missing meta/info\.json"):
        _load(lerobot_root, name)
    assert main(["data", "stats", "--data_root_dir", str(lerobot_root), "--data_mix", name]) == 2
    err = capsys.readouterr().err
    assert "meta/info.json" in err and "Traceback" not in err


def test_unknown_codebase_version(lerobot_root):
    edit_info(lerobot_root / V3, codebase_version="v9.9")
    with pytest.raises(LatentVLAError, match=r"info\.json: codebase_version 'v9\.9' is not supported"):
        _load(lerobot_root, V3)


@pytest.mark.parametrize("field,value", [("image_keys", "[observation.images.top]"), ("action_key", "actions"),
                                         ("proprio_keys", "[joint_state]")])
def test_mapped_feature_absent(lerobot_root, tmp_path, field, value):
    keys = {"image_keys": "[image, wrist_image]", "action_key": "action", "proprio_keys": "['state']"}
    keys[field] = value
    reg = tmp_path / "reg.yaml"
    reg.write_text("datasets:\n  - name: mine\n    directory: libero_tiny_lerobot\n    platform: libero\n"
                   + "".join(f"    {k}: {v}\n" for k, v in keys.items()))
    missing = value.strip("[]").split(",")[0].strip("'")
    with pytest.raises(LatentVLAError, match=rf"info\.json: dataset 'mine' has no feature '{missing}' \({field}"):
        _load(lerobot_root, "mine", dataset_registry=str(reg))


@pytest.mark.parametrize("name", NAMES)
def test_video_file_missing(lerobot_root, name):
    victim = sorted((lerobot_root / name / "videos").rglob("*.mp4"))[-1]
    victim.unlink()
    with pytest.raises(LatentVLAError, match=rf"{victim.name}: video file missing"):
        _load(lerobot_root, name)


@pytest.mark.parametrize("name", NAMES)
def test_video_file_truncated(lerobot_root, name):
    victim = sorted((lerobot_root / name / "videos").rglob("*.mp4"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(LatentVLAError, match=rf"{victim.name}: .*truncated"):
        _load(lerobot_root, name)


def test_video_truncated_after_indexing_fails_on_read(lerobot_root):
    ds = _load(lerobot_root, V21, image_aug=False)
    victim = lerobot_root / V21 / "videos" / "chunk-000" / "observation.images.image" / "episode_000002.mp4"
    victim.write_bytes(victim.read_bytes()[:600])
    with pytest.raises(LatentVLAError, match=rf"{victim.name}: .*(truncated|damaged)"):
        for i in range(27, 36):
            ds[i]


@pytest.mark.parametrize("name", NAMES)
def test_timestamp_without_frame(lerobot_root, name):
    path = data_files(lerobot_root / name)[0]

    def shift(ts):
        ts[5] += 0.05  # half-way between two frames
        return ts

    rewrite_column(path, "timestamp", shift)
    with pytest.raises(LatentVLAError, match=r"no frame within 0\.0001 s of t=.*episode 0 camera 'observation"):
        _load(lerobot_root, name)


@pytest.mark.parametrize("name", NAMES)
def test_row_count_differs_from_total_frames(lerobot_root, name):
    edit_info(lerobot_root / name, total_frames=37)
    with pytest.raises(LatentVLAError, match=r"info\.json: total_frames is 37 but the \d data parquet file\(s\) hold "
                                             r"36 rows"):
        _load(lerobot_root, name)


@pytest.mark.parametrize("name", NAMES)
def test_nan_in_actions(lerobot_root, name):
    path = data_files(lerobot_root / name)[0]

    def poison(a):
        a[3, 2] = np.nan
        return a

    rewrite_column(path, "action", poison)
    with pytest.raises(LatentVLAError, match=rf"{path.name} \(episode_index 0\): action column 'action' has NaN/inf "
                                             "at step 3"):
        _load(lerobot_root, name)


def test_episode_length_disagrees_with_rows(lerobot_root):
    p = lerobot_root / V21 / "meta" / "episodes.jsonl"
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    rows[1]["length"] = 14
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LatentVLAError, match=r"episode_000001\.parquet: episode 1 has 15 rows but the episodes "
                                             "metadata says 14"):
        _load(lerobot_root, V21)


def test_missing_split(lerobot_root):
    with pytest.raises(LatentVLAError, match=r"info\.json: no split 'val'; splits: train"):
        VLADataset(lerobot_root, V3, split="val", progress=False)


def test_missing_pyarrow_names_the_extra(lerobot_root, monkeypatch):
    shutil.rmtree(lerobot_root / V3 / ".latentvla_cache", ignore_errors=True)
    for mod in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(LatentVLAError, match=r"needs pyarrow: pip install latentvla\[lerobot\]"):
        _load(lerobot_root, V3)
