"""`latentvla lam annotate` on LeRobot data: a new dataset with latent columns, originals untouched, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from annotate_helpers import CrashAfter, expected_labels, write_tiny_lam
from image_lam_helpers import TINY

from latentvla.cli import main as cli_main
from latentvla.data.lerobot import LeRobotDir
from latentvla.errors import LatentVLAError

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_written" / "libero_tiny_lerobot"


@pytest.fixture(scope="module")
def lam_ckpt(tmp_path_factory) -> Path:
    return write_tiny_lam(tmp_path_factory.mktemp("lam"))


def _hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _annotate(src: Path, lam: Path, *extra: str) -> int:
    return cli_main(["lam", "annotate", "--lam_ckpt", str(lam), "--dataset_dir", str(src), "--batch_size", "5",
                     "--pair_offset", "3", *extra])


def test_annotated_copy_has_latent_columns_and_originals_are_untouched(lam_ckpt, tmp_path):
    import pyarrow.parquet as pq

    from latentvla.lam.image_lam_checkpoint import load_image_lam

    src = tmp_path / "libero_tiny_lerobot"
    shutil.copytree(FIXTURE, src)
    before = _hashes(src)
    assert _annotate(src, lam_ckpt, "--image_key", "image") == 0
    assert _hashes(src) == before  # every original file byte-identical
    out = LeRobotDir(tmp_path / "libero_tiny_lerobot_latent")
    assert out.features["latent_idx"] == {"dtype": "int64", "shape": [4], "names": None}
    assert out.features["latent_z"] == {"dtype": "float32", "shape": [4, 16], "names": None}
    assert list(out.features)[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    for rel, h in before.items():  # videos and tasks unchanged (videos hard-linked)
        if rel.startswith("videos/") or rel == "meta/tasks.parquet":
            assert _hashes(out.path)[rel] == h
        if rel.startswith("videos/"):
            assert (out.path / rel).stat().st_ino == (src / rel).stat().st_ino
    old, new = pq.read_table(src / "data/chunk-000/file-000.parquet"), pq.read_table(
        out.path / "data/chunk-000/file-000.parquet")
    assert new.drop(["latent_idx", "latent_z"]).equals(old)  # original columns equal
    assert pq.ParquetFile(out.path / "data/chunk-000/file-000.parquet").metadata.num_row_groups == 3
    model, _ = load_image_lam(lam_ckpt)
    used = set()
    for e in range(out.num_episodes()):
        ep = out.read_episode(e)
        T = len(ep["action"])
        assert ep["latent_idx"].shape == (T, 4) and ep["latent_z"].shape == (T, 4, 16)
        idx, z = expected_labels(model, ep["observation.images.image"])
        np.testing.assert_array_equal(ep["latent_idx"], idx)
        np.testing.assert_allclose(ep["latent_z"], z, rtol=0, atol=1e-6)
        used.update(ep["latent_idx"].ravel().tolist())
    assert len(used) > 1
    stats = json.loads((out.path / "meta/stats.json").read_text())
    assert np.asarray(stats["latent_z"]["mean"]).shape == (4, 16) and stats["latent_idx"]["count"] == [36]
    eps = pq.read_table(out.path / "meta/episodes/chunk-000/file-000.parquet")
    assert eps.column("stats/latent_idx/max").to_pylist()[0] == ep_max(out, 0)
    record = json.loads((out.path / "meta/latent_annotation.json").read_text())
    assert record["codebook_size"] == TINY["codebook_size"] and record["image_key"] == "observation.images.image"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    # a second run skips; annotating the annotated copy is refused
    assert _annotate(src, lam_ckpt) == 0
    with pytest.raises(LatentVLAError, match="already carries latent_idx"):
        from latentvla.lam.annotate import _check_source

        _check_source(out, "")


def ep_max(d: LeRobotDir, e: int) -> list[int]:
    return d.read_episode(e, keys=["latent_idx"])["latent_idx"].max(0).tolist()


def test_interrupted_run_resumes_per_data_file(lam_ckpt, tmp_path):
    from latentvla.data.lerobot_writer import LeRobotWriter
    from latentvla.lam.annotate import annotate_lerobot
    from latentvla.lam.image_lam_checkpoint import load_image_lam
    from latentvla.lam.latent_labeler import LatentLabeler

    feats = {"observation.images.image": {"dtype": "video", "shape": [64, 64, 3], "names": None},
             "action": {"dtype": "float32", "shape": [7], "names": None}}
    rng = np.random.default_rng(0)
    src = tmp_path / "ds"
    with LeRobotWriter(src, feats, fps=10, data_files_size_in_mb=1e-6, vcodec="h264") as w:  # one file per episode
        for T in (5, 4, 6):
            w.add_episode({"observation.images.image": rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8),
                           "action": rng.normal(size=(T, 7)).astype(np.float32)}, "task")
    src_dir = LeRobotDir(src)
    out = tmp_path / "ds_latent"
    labeler = LatentLabeler(load_image_lam(lam_ckpt)[0], pair_offset=3, batch_size=8)
    job = {"lam_ckpt": "x", "pair_offset": 3}
    with pytest.raises(KeyboardInterrupt):
        annotate_lerobot(src_dir, out, "", CrashAfter(labeler, 2), job=job)  # dies in the second file
    assert not out.exists()
    staging = tmp_path / ".ds_latent.annotating"
    done = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*.parquet"))
    assert done == ["data/chunk-000/file-000.parquet"]
    ino = (staging / done[0]).stat().st_ino
    again = CrashAfter(labeler, None)
    annotate_lerobot(src_dir, out, "", again, job=job)
    assert again.calls == 2 and (out / done[0]).stat().st_ino == ino  # the finished file was not redone
    d = LeRobotDir(out)
    assert [len(d.read_episode(i, keys=["latent_idx"])["latent_idx"]) for i in range(3)] == [5, 4, 6]
    assert not staging.exists()


def test_lerobot_annotate_errors(lam_ckpt, tmp_path, capsys):
    src = tmp_path / "libero_tiny_lerobot"
    shutil.copytree(FIXTURE, src)
    assert _annotate(src, lam_ckpt, "--image_key", "top") == 2
    err = capsys.readouterr().err
    assert "image key 'top' not found" in err and "observation.images.wrist_image" in err
    assert _annotate(src, lam_ckpt, "--in_place") == 2
    assert "--in_place is for RLDS" in capsys.readouterr().err
    assert _annotate(src, lam_ckpt, "--output_dir", str(src)) == 2
    assert "must differ from the input" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libero_tiny_lerobot"]


def _annotated_root(lam_ckpt, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(FIXTURE, root / "libero_tiny_lerobot")
    assert cli_main(["lam", "annotate", "--lam_ckpt", str(lam_ckpt), "--data_root_dir", str(root), "--data_mix",
                     "libero_tiny_lerobot", "--batch_size", "8", "--pair_offset", "3"]) == 0
    assert (root / "libero_tiny_lerobot_latent" / "meta" / "info.json").is_file()
    return root


def test_annotated_lerobot_copy_serves_latent_labels(lam_ckpt, tmp_path):
    """--data_mix resolves the LeRobot dir; VLADataset then finds the `_latent` sibling for the labels."""
    from latentvla.data.dataset import VLADataset

    root = _annotated_root(lam_ckpt, tmp_path)
    for mix in ("libero_tiny_lerobot", "libero_tiny_lerobot_latent"):
        ds = VLADataset(root, mix, image_size=64, extra_keys=("latent_idx", "latent_z"), progress=False)
        s = ds[3]
        assert s["latent_idx"].shape == (8, 4) and s["latent_z"].shape == (8, 4, 16)


def test_la_direct_trains_on_annotated_lerobot(lam_ckpt, tmp_path, tiny_vlm_dir):
    from test_train_vla import paper_flags

    root = _annotated_root(lam_ckpt, tmp_path)
    runs = tmp_path / "runs"
    flags = paper_flags(tiny_vlm_dir, root, runs, "la_direct", data_mix='["libero_tiny_lerobot"]', max_steps=1,
                        save_step=1)
    assert cli_main(["train", *flags]) == 0
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert (run / "checkpoints" / "step_1").is_dir()


def test_v21_source_gives_a_v21_copy(lam_ckpt, tmp_path):
    src = tmp_path / "libero_tiny_lerobot_v21"
    shutil.copytree(FIXTURE.parent / "libero_tiny_lerobot_v21", src)
    before = _hashes(src)
    assert _annotate(src, lam_ckpt) == 0
    assert _hashes(src) == before
    out = LeRobotDir(tmp_path / "libero_tiny_lerobot_v21_latent")
    assert out.codebase_version == "v2.1" and out.features["latent_idx"]["shape"] == [4]
    assert [len(out.read_episode(i, keys=["latent_idx"])["latent_idx"]) for i in range(3)] == [12, 15, 9]
    lines = [json.loads(x) for x in (out.path / "meta" / "episodes_stats.jsonl").read_text().splitlines()]
    assert lines[1]["stats"]["latent_z"]["count"] == [15] and "observation.state" in lines[1]["stats"]
    for rel, h in before.items():
        if rel.startswith("videos/") or rel in ("meta/tasks.jsonl", "meta/episodes.jsonl"):
            assert _hashes(out.path)[rel] == h
