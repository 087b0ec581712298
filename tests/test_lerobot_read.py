"""Reading LeRobot datasets written by lerobot itself (tests/fixtures/lerobot_written, see its README):
frames at the right index for every row (nearest timestamp, not floor), the README's decoded mean
RGB, actions/states exact and equal across v3.0 / v2.1, and the datasets and statistics on top."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lerobot_helpers import FIXTURE_NAMES

pytest.importorskip("pyarrow")
av = pytest.importorskip("av")

from latentvla.data.lerobot import LeRobotDir  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "lerobot_written"
# README "Reference values": (episode, frame) -> camera -> decoded mean RGB per folder
MEANS = {
    (0, 0): {"image": {"av1": (120.5, 104.5, 106.5), "h264": (120.5, 104.5, 106.5), "v21": (120.5, 104.5, 106.5)},
             "wrist_image": {"av1": (157.3, 147.5, 128.7), "h264": (157.2, 147.3, 128.9),
                             "v21": (157.3, 147.5, 128.8)}},
    (1, 3): {"image": {"av1": (121.5, 113.3, 159.0), "h264": (121.2, 113.6, 158.6), "v21": (121.5, 113.3, 158.7)},
             "wrist_image": {"av1": (123.0, 147.6, 131.5), "h264": (122.9, 147.5, 131.9),
                             "v21": (123.0, 147.6, 131.6)}},
    (2, 8): {"image": {"av1": (130.6, 114.4, 157.1), "h264": (130.7, 114.3, 157.1), "v21": (130.6, 114.4, 157.1)},
             "wrist_image": {"av1": (125.1, 156.7, 134.2), "h264": (125.2, 156.5, 134.3),
                             "v21": (125.1, 156.7, 134.3)}},
}
CODEC = {"libero_tiny_lerobot": "av1", "libero_tiny_lerobot_h264": "h264", "libero_tiny_lerobot_v21": "v21"}
CAMS = ("observation.images.image", "observation.images.wrist_image")


def _sequential_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_metadata(name):
    d = LeRobotDir(FIX / name)
    assert d.codebase_version == ("v2.1" if name.endswith("v21") else "v3.0")
    assert d.fps == 10 and d.robot_type == "panda" and d.split_names == ["train"]
    assert d.num_episodes() == 3 and d.episode_lengths().tolist() == [12, 15, 9]
    assert d.tasks == {0: "put the black bowl on the plate", 1: "open the top drawer of the cabinet"}
    assert d.video_keys == list(CAMS)
    assert d.specs["steps/action"].shape == (7,) and d.specs["steps/timestamp"].shape == ()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_row_gets_its_frame(name):
    """All 36 rows x 2 cameras, read in shuffled order: the frame decoded sequentially at
    round(video time * fps); 7 rows per camera are ones where floor() would pick the previous frame."""
    d = LeRobotDir(FIX / name)
    floor_wrong = 0
    rng = np.random.default_rng(0)
    for cam in CAMS:
        seq = {}
        for i in rng.permutation(3):
            i = int(i)
            e = d.episode_indices()[i]
            path, start = d.video_file(e, cam)
            if path not in seq:
                seq[path] = _sequential_frames(path)
            ts = d.read_episode(i, keys=["timestamp"])["timestamp"].astype(np.float64)
            q = (start + ts) * d.fps
            want = np.round(q).astype(int)
            steps = rng.permutation(len(ts))
            got = d.frames(i, steps, cam)
            for s, frame in zip(steps, got, strict=True):
                assert np.array_equal(frame, seq[path][want[s]]), (cam, e, s)
                if np.floor(q[s]) != want[s]:
                    floor_wrong += 1
                    assert not np.array_equal(frame, seq[path][want[s] - 1])
    assert floor_wrong == 2 * 7


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_decoded_means_match_the_readme(name):
    d = LeRobotDir(FIX / name)
    for (e, t), cams in MEANS.items():
        for cam, by_codec in cams.items():
            mean = d.frames(e, [t], f"observation.images.{cam}")[0].reshape(-1, 3).mean(0)
            np.testing.assert_allclose(mean, by_codec[CODEC[name]], atol=1.0)


def test_v21_equals_v30_content():
    eps = {n: list(LeRobotDir(FIX / n).iter_episodes(keys=["action", "observation.state", "timestamp",
                                                              "frame_index", "index", "task_index"]))
           for n in FIXTURE_NAMES}
    ref = eps["libero_tiny_lerobot"]
    for n in FIXTURE_NAMES[1:]:
        for a, b in zip(ref, eps[n], strict=True):
            assert a.keys() == b.keys()
            for k in a:
                assert np.array_equal(a[k], b[k]), (n, k)  # exact: same float32 bits
    assert [e["task"] for e in ref] == ["put the black bowl on the plate", "open the top drawer of the cabinet",
                                        "put the black bowl on the plate"]
    assert ref[1]["index"][0] == 12 and ref[2]["index"][0] == 27
    assert ref[0]["action"].dtype == np.float32 and ref[0]["action"].shape == (12, 7)
    assert set(np.unique(ref[0]["action"][:, -1])) == {-1.0, 1.0}
    # pixels differ only by codec settings (v2.1 used another SVT-AV1 preset)
    a = LeRobotDir(FIX / FIXTURE_NAMES[0]).read_episode(1, keys=list(CAMS))
    b = LeRobotDir(FIX / FIXTURE_NAMES[2]).read_episode(1, keys=list(CAMS))
    for cam in CAMS:
        assert a[cam].shape == b[cam].shape == (15, 256, 256, 3)
        assert np.abs(a[cam].astype(int) - b[cam].astype(int)).mean() < 3


def test_actions_and_states_exact_against_parquet():
    import pyarrow.parquet as pq

    t = pq.read_table(FIX / "libero_tiny_lerobot" / "data" / "chunk-000" / "file-000.parquet")
    act = np.asarray(t.column("action").to_pylist(), np.float32)
    state = np.asarray(t.column("observation.state").to_pylist(), np.float32)
    d = LeRobotDir(FIX / "libero_tiny_lerobot_v21")
    got = list(d.iter_episodes(keys=["action", "observation.state"]))
    assert np.array_equal(np.concatenate([g["action"] for g in got]), act)
    assert np.array_equal(np.concatenate([g["observation.state"] for g in got]), state)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_datasets_and_true_quantiles(lerobot_root, name):
    from latentvla.data.dataset import ActionChunkDataset, FramePairDataset, VLADataset
    from latentvla.data.index import standardize_actions

    ds = VLADataset(lerobot_root, name, image_size=32, image_aug=False, progress=False)
    assert ds.platform.name == "libero" and len(ds) == 36 and ds.indexes[0].num_episodes == 3
    s = ds[15]  # episode 1, step 3
    assert (s["episode"], s["step"]) == (1, 3) and s["instruction"] == "open the top drawer of the cabinet"
    assert s["images"].shape == (2, 32, 32, 3) and s["actions"].shape == (8, 7) and s["proprio"].shape == (8,)
    raw = np.concatenate([e["action"] for e in LeRobotDir(FIX / name).iter_episodes(keys=["action"])])
    std = standardize_actions(raw, "libero_gripper").astype(np.float64)
    st = ds.statistics[name]
    np.testing.assert_allclose(st["action"]["q01"], np.quantile(std, 0.01, axis=0), atol=1e-6)
    np.testing.assert_allclose(st["action"]["q99"], np.quantile(std, 0.99, axis=0), atol=1e-6)
    if name != "libero_tiny_lerobot_v21":  # lerobot's own quantiles are per-episode averages, not ours
        ref = json.loads((FIX / name / "meta" / "stats.json").read_text())["observation.state"]
        np.testing.assert_allclose(st["proprio"]["mean"], ref["mean"], atol=1e-5)
        np.testing.assert_allclose(st["proprio"]["max"], ref["max"], atol=1e-6)
        assert np.abs(np.asarray(st["proprio"]["q01"]) - ref["q01"]).max() > 1e-3
    assert st["num_transitions"] == 36 and st["num_trajectories"] == 3
    cache = list((lerobot_root / name / ".latentvla_cache").glob("statistics-*.json"))
    assert len(cache) == 1 and json.loads(cache[0].read_text()) == st
    again = VLADataset(lerobot_root, name, image_size=32, image_aug=False, progress=False)  # from the cache
    assert np.array_equal(again[15]["images"], s["images"]) and np.array_equal(again[15]["actions"], s["actions"])
    pairs = FramePairDataset(lerobot_root, name, pair_offset=4, image_size=16, progress=False)
    assert pairs[3]["frames"].shape == (2, 16, 16, 3) and pairs[3]["actions"].shape == (4, 7)
    chunks = ActionChunkDataset(lerobot_root, name, progress=False)
    a, pad = chunks.all_chunks()
    assert a.shape == (36, 8, 7) and pad[11].tolist() == [False] + [True] * 7


def test_dataloader_workers_match_one_process(lerobot_root):
    """Forked workers open their own decoders (none shared with the parent, which has decoded already)."""
    import torch

    from latentvla.data.dataset import VLADataset

    ds = VLADataset(lerobot_root, "libero_tiny_lerobot", image_size=32, image_aug=False, progress=False)
    ref = [ds[i]["images"] for i in range(36)]
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=2, multiprocessing_context="fork")
    got = np.concatenate([b["images"].numpy() for b in loader])
    assert np.array_equal(got, np.stack(ref))


def test_feature_mapping_through_a_registry_file(lerobot_root, tmp_path):
    from latentvla.data.dataset import VLADataset

    reg = tmp_path / "reg.yaml"
    reg.write_text("datasets:\n  - name: my_panda\n    directory: libero_tiny_lerobot_v21\n    format: lerobot\n"
                   "    platform: libero\n    image_keys: [observation.images.wrist_image]\n"
                   "    proprio_keys: ['observation.state']\n    action_key: action\n")
    ds = VLADataset(lerobot_root, "my_panda", image_size=16, use_wrist_image=False, progress=False,
                    dataset_registry=str(reg))
    assert ds.indexes[0].camera_keys == ["observation.images.wrist_image"]
    assert ds[0]["instruction"] == "put the black bowl on the plate"
    raw = LeRobotDir(FIX / "libero_tiny_lerobot_v21").read_episode(0, keys=["action"])["action"]
    assert ds.indexes[0].actions[0, -1] == raw[0, -1]  # no standardization registered: raw gripper


def test_unregistered_panda_dataset_uses_the_libero_layout(lerobot_root):
    from latentvla.data.dataset import VLADataset
    from latentvla.errors import LatentVLAError

    (lerobot_root / "libero_tiny_lerobot_v21").rename(lerobot_root / "my_panda_data")
    ds = VLADataset(lerobot_root, "my_panda_data", image_size=16, progress=False)
    assert ds.platform.name == "libero" and ds.resolved[0].entry.action_standardization == "libero_gripper"
    with pytest.raises(LatentVLAError, match="unknown dataset or mixture 'my_other_data'"):
        VLADataset(lerobot_root, "my_other_data", progress=False)


def test_few_open_decoders_give_the_same_frames(lerobot_root, monkeypatch):
    """v2.1 has one mp4 per episode and camera; with 2 decoders open at most, least recent ones close."""
    from latentvla.data import handles
    from latentvla.data.dataset import VLADataset

    ds = VLADataset(lerobot_root, "libero_tiny_lerobot_v21", image_size=16, image_aug=False, progress=False)
    ref = [ds[i]["images"] for i in range(36)]
    monkeypatch.setattr(handles, "MAX_OPEN_VIDEOS", 2)
    ds._handles = handles.Handles()
    order = np.random.default_rng(1).permutation(36)
    for i in order:
        assert np.array_equal(ds[int(i)]["images"], ref[int(i)])
    assert len(ds._handles._videos) == 2


def test_one_mix_of_rlds_and_lerobot(lerobot_root, vla_data_root):
    import shutil

    from latentvla.data.dataset import VLADataset

    shutil.copytree(vla_data_root / "libero_goal_no_noops", lerobot_root / "libero_goal_no_noops")
    ds = VLADataset(lerobot_root, '["libero_goal", "libero_tiny_lerobot_h264"]', image_size=16, progress=False)
    assert [ix.format for ix in ds.indexes] == ["rlds", "lerobot"] and len(ds) == 31 + 36
    assert ds.statistics.keys() == {"libero_goal_no_noops", "libero_tiny_lerobot_h264"}
    a, b = ds[0], ds[31 + 15]
    assert a["dataset_name"] == "libero_goal_no_noops" and b["dataset_name"] == "libero_tiny_lerobot_h264"
    assert a["images"].shape == b["images"].shape == (2, 16, 16, 3) and a["actions"].shape == b["actions"].shape


@pytest.mark.parametrize("name", ["libero_tiny_lerobot", "libero_tiny_lerobot_h264"])
def test_sequential_reads_seek_once(name):
    """Reading a shared mp4 front to back decodes forward (keyframes restart at every episode) with
    a single seek; going back within the cached frames neither seeks nor decodes."""
    from latentvla.data.video import VideoDecoder, frame_table

    path = FIX / name / "videos" / CAMS[0] / "chunk-000" / "file-000.mp4"
    ft = frame_table(path)
    k = np.arange(len(ft.pts))
    seq = _sequential_frames(path)
    dec = VideoDecoder(path)
    for i, p, s in zip(k, ft.pts, ft.seek_pts(k), strict=True):
        assert np.array_equal(dec.frame(p, s), seq[i])
    assert dec.seeks == 1 and len(seq) == 36
    assert np.array_equal(dec.frame(ft.pts[33], ft.seek_pts(k)[33]), seq[33]) and dec.seeks == 1
    assert np.array_equal(dec.frame(ft.pts[3], ft.seek_pts(k)[3]), seq[3]) and dec.seeks == 2
