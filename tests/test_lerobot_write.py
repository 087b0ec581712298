"""LeRobotWriter: the layout lerobot writes (checked against the lerobot-written fixtures), codecs, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from latentvla.data.lerobot import LeRobotDir
from latentvla.data.lerobot_writer import LeRobotWriter
from latentvla.errors import LatentVLAError

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot_written"
TABLES = ("meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet", "data/chunk-000/file-000.parquet")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def _rewrite(src: Path, out: Path, vcodec: str) -> LeRobotDir:
    """Read a lerobot-written fixture with our reader and write it again with our writer."""
    ref = LeRobotDir(src)
    feats = {k: {kk: f[kk] for kk in ("dtype", "shape", "names")} for k, f in ref.features.items()
             if k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")}
    with LeRobotWriter(out, feats, fps=int(ref.fps), robot_type=ref.robot_type, vcodec=vcodec) as w:
        for ep in ref.iter_episodes():
            w.add_episode({k: ep[k] for k in feats}, ep["task"])
    return LeRobotDir(out)


def _packets(mp4: Path) -> list[tuple[int, int, bool]]:
    import av

    with av.open(str(mp4)) as c:
        s = c.streams.video[0]
        return [(p.pts, p.dts, bool(p.is_keyframe)) for p in c.demux(s) if p.dts is not None]


@pytest.mark.parametrize("fixture,vcodec", [("libero_tiny_lerobot", "libsvtav1"), ("libero_tiny_lerobot_h264", "h264")])
def test_layout_matches_lerobot_written(tmp_path, fixture, vcodec):
    import pyarrow.parquet as pq

    src = FIXTURES / fixture
    out = _rewrite(src, tmp_path / "ds", vcodec)
    for rel in TABLES:  # same columns, types and row groups (one per episode) as lerobot's files
        ours, theirs = pq.ParquetFile(out.path / rel), pq.ParquetFile(src / rel)
        assert ours.schema_arrow.remove_metadata().equals(theirs.schema_arrow.remove_metadata()), rel
        assert ours.metadata.num_row_groups == theirs.metadata.num_row_groups, rel
    assert pq.read_table(out.path / TABLES[0]).equals(pq.read_table(src / TABLES[0]))
    data_ours, data_theirs = pq.read_table(out.path / TABLES[2]), pq.read_table(src / TABLES[2])
    assert data_ours.drop(["timestamp"]).equals(data_theirs.drop(["timestamp"]))  # actions / states bit-exact
    ts = data_ours.column("timestamp").to_numpy()
    assert ts.dtype == np.float32 and np.array_equal(ts, data_theirs.column("timestamp").to_numpy())
    info_ours, info_theirs = json.loads((out.path / "meta/info.json").read_text()), json.loads(
        (src / "meta/info.json").read_text())
    assert info_ours == info_theirs
    ep_cols = [c for c in pq.read_schema(src / TABLES[1]).names if not c.startswith("stats/")]
    assert pq.read_table(out.path / TABLES[1], columns=ep_cols).equals(pq.read_table(src / TABLES[1], columns=ep_cols))
    stats_ours, stats_theirs = (json.loads((p / "meta/stats.json").read_text()) for p in (out.path, src))
    assert set(stats_ours) == set(stats_theirs)
    for k in ("action", "observation.state"):  # exact min / max / mean; our quantiles are the true ones
        for s in ("min", "max", "mean", "std", "count"):
            np.testing.assert_allclose(stats_ours[k][s], stats_theirs[k][s], rtol=1e-5, atol=1e-6)
        vals = data_ours.column(k).combine_chunks().flatten().to_numpy().reshape(36, -1).astype(np.float64)
        q = np.quantile(vals, 0.99, axis=0)
        np.testing.assert_allclose(stats_ours[k]["q99"], q, rtol=1e-9)
    assert np.asarray(stats_ours["observation.images.image"]["mean"]).shape == (3, 1, 1)
    ref = LeRobotDir(src)
    for key in ref.video_keys:  # same time base, pts, dts and keyframes (restarting at each episode)
        rel = f"videos/{key}/chunk-000/file-000.mp4"
        assert _packets(out.path / rel) == _packets(src / rel)
        for i in range(ref.num_episodes()):
            steps = range(ref.episode_lengths()[i])
            a, b = out.frames(i, steps, key), ref.frames(i, steps, key)
            assert min(psnr(x, y) for x, y in zip(a, b, strict=True)) > 30  # a second encode of decoded frames


def test_files_roll_over_and_episodes_locate(tmp_path):
    feats = {"observation.images.cam": {"dtype": "video", "shape": [64, 64, 3], "names": None},
             "action": {"dtype": "float32", "shape": [2], "names": None},
             "latent_z": {"dtype": "float32", "shape": [2, 3], "names": None}}
    rng = np.random.default_rng(0)
    eps = []
    with LeRobotWriter(tmp_path / "ds", feats, fps=5, data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6,
                       chunks_size=2, vcodec="h264") as w:
        for e, T in enumerate([4, 6, 3]):
            ep = {"observation.images.cam": np.full((T, 64, 64, 3), 40 * e + 20, np.uint8),
                  "action": rng.normal(size=(T, 2)).astype(np.float32),
                  "latent_z": rng.normal(size=(T, 2, 3)).astype(np.float32)}
            eps.append(ep)
            w.add_episode(ep, ["a"] * (T - 1) + ["b"])
    d = LeRobotDir(tmp_path / "ds")
    assert sorted(p.relative_to(d.path).as_posix() for p in d.path.glob("data/*/*.parquet")) == [
        "data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet", "data/chunk-001/file-000.parquet"]
    assert len(list(d.path.glob("videos/observation.images.cam/chunk-*/file-*.mp4"))) == 3
    assert d.tasks == {0: "a", 1: "b"}
    for i, ep in enumerate(eps):
        got = d.read_episode(i)
        np.testing.assert_array_equal(got["action"], ep["action"])
        np.testing.assert_array_equal(got["latent_z"], ep["latent_z"])
        np.testing.assert_array_equal(got["task_index"], [0] * (len(ep["action"]) - 1) + [1])
        assert np.abs(got["observation.images.cam"].astype(int) - ep["observation.images.cam"]).max() <= 3
    assert d.episode_meta(1)["tasks"] == ["a", "b"] and d.episode_meta(2)["dataset_from_index"] == 10


def _small_features():
    return {"observation.images.cam": {"dtype": "video", "shape": [32, 32, 3], "names": None},
            "action": {"dtype": "float32", "shape": [2], "names": None}}


def _small_episode(T=3):
    return {"observation.images.cam": np.zeros((T, 32, 32, 3), np.uint8), "action": np.zeros((T, 2), np.float32)}


def test_bad_episodes_are_clear_errors_and_leave_nothing(tmp_path):
    out = tmp_path / "ds"
    cases = [({"action": np.zeros((3, 2), np.float32)}, r"episode 1: missing feature\(s\) observation.images.cam"),
             ({**_small_episode(), "extra": np.zeros(3)}, r"undeclared feature\(s\) extra"),
             ({**_small_episode(), "action": np.zeros((4, 2), np.float32)}, "same number"),
             ({**_small_episode(), "action": np.full((3, 2), np.nan, np.float32)}, "NaN"),
             ({**_small_episode(), "action": np.zeros((3, 5), np.float32)}, r"expected \[T, 2\]"),
             ({**_small_episode(), "observation.images.cam": np.zeros((3, 32, 30, 3), np.uint8)}, "expected uint8")]
    for ep, msg in cases:
        with pytest.raises(LatentVLAError, match=msg):
            with LeRobotWriter(out, _small_features(), fps=10) as w:
                w.add_episode(_small_episode(), "ok")
                w.add_episode(ep, "task")
        assert not out.exists() and not list(tmp_path.iterdir())  # no partial output, no temp dir left
    with pytest.raises(LatentVLAError, match="must be even"):
        with LeRobotWriter(out, {"observation.images.cam": {"dtype": "video", "shape": [31, 32, 3]}}, fps=10) as w:
            w.add_episode({"observation.images.cam": np.zeros((2, 31, 32, 3), np.uint8)}, "t")
    with pytest.raises(LatentVLAError, match="no episodes"):
        LeRobotWriter(out, _small_features(), fps=10).close()
    with pytest.raises(LatentVLAError, match="dtype 'string' is not supported"):
        LeRobotWriter(out, {"note": {"dtype": "string", "shape": [1]}}, fps=10)
    with pytest.raises(LatentVLAError, match="written by the writer itself"):
        LeRobotWriter(out, {"timestamp": {"dtype": "float32", "shape": [1]}}, fps=10)
    with pytest.raises(LatentVLAError, match="vcodec"):
        LeRobotWriter(out, _small_features(), fps=10, vcodec="vp9")
    assert not list(tmp_path.iterdir())
    with LeRobotWriter(out, _small_features(), fps=10) as w:
        w.add_episode(_small_episode(), "t")
    with pytest.raises(LatentVLAError, match="already exists"):
        LeRobotWriter(out, _small_features(), fps=10)
    with LeRobotWriter(out, _small_features(), fps=10, overwrite=True) as w:
        w.add_episode(_small_episode(5), "t")
    assert LeRobotDir(out).episode_lengths().tolist() == [5]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


LEROBOT_LOAD = """
import sys, warnings, numpy as np
warnings.filterwarnings("ignore")
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/check", root=sys.argv[1], video_backend="pyav")
out = {}
for i in range(len(ds)):
    for k, v in ds[i].items():
        if hasattr(v, "numpy"):
            out.setdefault(k, []).append(v.numpy())
np.savez(sys.argv[2], **{k: np.stack(v) for k, v in out.items()})
"""


@pytest.mark.skipif(not os.environ.get("LATENTVLA_LEROBOT_PYTHON"),
                    reason="set LATENTVLA_LEROBOT_PYTHON to a python with lerobot installed (scratch venv)")
@pytest.mark.parametrize("vcodec", ["libsvtav1", "h264"])
def test_lerobot_package_loads_our_output(tmp_path, vcodec):
    """lerobot's own LeRobotDataset reads what we write: same values, same decoded pixels (opt-in, not in CI)."""
    import subprocess

    feats = {"observation.images.image": {"dtype": "video", "shape": [64, 64, 3], "names": None},
             "observation.state": {"dtype": "float32", "shape": [8], "names": None},
             "is_first": {"dtype": "bool", "shape": [1], "names": None},
             "latent_idx": {"dtype": "int64", "shape": [4], "names": None},
             "latent_z": {"dtype": "float32", "shape": [4, 3], "names": None},
             "action": {"dtype": "float32", "shape": [7], "names": None}}
    rng = np.random.default_rng(0)
    with LeRobotWriter(tmp_path / "ds", feats, fps=10, vcodec=vcodec) as w:
        for T in (7, 5):
            w.add_episode({"observation.images.image": rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8),
                           "observation.state": rng.normal(size=(T, 8)), "is_first": np.arange(T) == 0,
                           "latent_idx": rng.integers(0, 16, (T, 4)), "latent_z": rng.normal(size=(T, 4, 3)),
                           "action": rng.normal(size=(T, 7))}, f"task {T}")
    res = subprocess.run([os.environ["LATENTVLA_LEROBOT_PYTHON"], "-c", LEROBOT_LOAD, str(tmp_path / "ds"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    theirs = np.load(tmp_path / "out.npz")
    d = LeRobotDir(tmp_path / "ds")
    ours = [d.read_episode(i) for i in range(2)]
    for k in feats:
        got = np.concatenate([ep[k] for ep in ours])
        if k.startswith("observation.images"):
            got = got.transpose(0, 3, 1, 2).astype(np.float32) / 255
            np.testing.assert_allclose(theirs[k], got, atol=1e-6)
        else:
            np.testing.assert_array_equal(theirs[k], got.astype(theirs[k].dtype))
