"""`latentvla lam annotate`: round trip, byte-identical originals, resume, skip/overwrite, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from annotate_helpers import CrashAfter, expected_labels, write_tiny_lam
from image_lam_helpers import TINY

from latentvla.cli import main as cli_main
from latentvla.data.example import decode_example
from latentvla.data.tfds import TFDSBuilderDir
from latentvla.data.tfrecord import iter_records
from latentvla.errors import LatentVLAError


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from latentvla.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("annotate")
    # small shards: several per split, so resume granularity is visible
    write_synthetic_dataset(root / "data", name="libero_goal_no_noops", num_episodes=5, steps=[6, 1, 9, 4, 7, 5, 3],
                            image_size=64, val_episodes=2, max_shard_bytes=12_000)
    write_tiny_lam(root)
    return root


def _fresh_data(assets: Path, tmp_path: Path) -> Path:
    shutil.copytree(assets / "data", tmp_path / "data")
    return tmp_path / "data"


def _annotate(data: Path, lam: Path, *extra: str) -> int:
    return cli_main(["lam", "annotate", "--lam_ckpt", str(lam), "--data_root_dir", str(data), "--data_mix",
                     "libero_goal", "--batch_size", "5", "--pair_offset", "3", *extra])


def test_round_trip_every_step_of_every_episode(assets, tmp_path):
    from latentvla.lam.image_lam_checkpoint import load_image_lam

    data = _fresh_data(assets, tmp_path)
    run = tmp_path / "lam_run"  # an image-train run dir resolves to the checkpoint `latest` names
    shutil.copytree(assets / "lam", run / "checkpoints" / "step_1")
    (run / "checkpoints" / "latest").write_text("step_1\n")
    assert cli_main(["lam", "annotate", "--lam_path", str(run), "--data_root_dir", str(data), "--data_mix",
                     "libero_goal", "--batch_size", "5", "--pair_offset", "3"]) == 0
    src = TFDSBuilderDir(data / "libero_goal_no_noops" / "1.0.0")
    out = TFDSBuilderDir(data / "libero_goal_no_noops_latent" / "1.0.0")
    assert out.name == "libero_goal_no_noops_latent" and out.split_names == src.split_names
    assert out.specs["steps/latent_idx"].shape == (4,) and out.specs["steps/latent_idx"].dtype == "int64"
    assert out.specs["steps/latent_z"].shape == (4, 16) and out.specs["steps/latent_z"].dtype == "float32"
    assert len(src.shard_paths("train")) > 1
    model, _ = load_image_lam(assets / "lam")
    used = set()
    for split in src.split_names:
        assert out.shard_lengths(split) == src.shard_lengths(split)
        for so, oo in zip(src.shard_paths(split), out.shard_paths(split), strict=True):
            for (_, a), (_, b) in zip(iter_records(so), iter_records(oo), strict=True):
                ra, rb = decode_example(a), decode_example(b)
                assert set(rb) == set(ra) | {"steps/latent_idx", "steps/latent_z"}
                for k, v in ra.items():  # original features byte-identical
                    if isinstance(v, list):
                        assert v == rb[k]
                    else:
                        assert v.dtype == rb[k].dtype and v.tobytes() == rb[k].tobytes()
        for e in range(src.num_episodes(split)):
            ep = out.read_episode(e, split)
            T = len(ep["action"])
            assert ep["latent_idx"].shape == (T, 4) and ep["latent_idx"].dtype == np.int64
            assert ep["latent_z"].shape == (T, 4, 16) and ep["latent_z"].dtype == np.float32
            used.update(ep["latent_idx"].ravel().tolist())
            # the label of step t is the pair (t, min(t + 3, T - 1)) of the primary camera
            idx, z = expected_labels(model, ep["observation/image"])
            np.testing.assert_array_equal(ep["latent_idx"], idx)
            np.testing.assert_allclose(ep["latent_z"], z, rtol=0, atol=0)
    assert len(used) > 1
    info = json.loads((out.path / "dataset_info.json").read_text())
    assert info["name"] == "libero_goal_no_noops_latent"
    record = json.loads((out.path / "latent_annotation.json").read_text())
    assert record["codebook_size"] == TINY["codebook_size"] and record["num_codes"] == 4
    assert record["lam_ckpt"] == str((run / "checkpoints" / "step_1").resolve())
    assert not [p for p in out.path.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_interrupted_run_resumes_per_shard(assets, tmp_path):
    from latentvla.lam.annotate import annotate_builder
    from latentvla.lam.image_lam_checkpoint import load_image_lam
    from latentvla.lam.latent_labeler import LatentLabeler

    data = _fresh_data(assets, tmp_path)
    src = TFDSBuilderDir(data / "libero_goal_no_noops" / "1.0.0")
    out = data / "libero_goal_no_noops_latent" / "1.0.0"
    labeler = LatentLabeler(load_image_lam(assets / "lam")[0], pair_offset=3, batch_size=8)
    job = {"lam_ckpt": "x", "pair_offset": 3}
    crash = CrashAfter(labeler, n=2)  # one label call per shard here: dies in the second shard
    with pytest.raises(KeyboardInterrupt):
        annotate_builder(src, out, "observation/image", crash, job=job)
    assert not out.exists()  # nothing partial is visible
    staging = out.parent / ".1.0.0.annotating"
    done = sorted(p.name for p in staging.iterdir() if "tfrecord" in p.name)
    assert len(done) == 1 and not [p for p in staging.iterdir() if p.name.startswith(".")]
    first = (staging / done[0]).stat()
    n_shards = sum(len(src.shard_paths(s)) for s in src.split_names)
    again = CrashAfter(labeler, n=None)
    annotate_builder(src, out, "observation/image", again, job=job)
    assert again.calls == n_shards - 1  # the finished shard was not redone
    assert (out / done[0]).stat().st_ino == first.st_ino
    assert not staging.exists()
    b = TFDSBuilderDir(out)
    assert all(len(ep["latent_idx"]) == len(ep["action"]) for s in b.split_names for ep in b.iter_episodes(s))


def test_complete_output_skipped_unless_overwrite(assets, tmp_path, capsys):
    data = _fresh_data(assets, tmp_path)
    assert _annotate(data, assets / "lam") == 0
    out = data / "libero_goal_no_noops_latent" / "1.0.0"
    shard = sorted(out.glob("*train.tfrecord*"))[0]
    ino = shard.stat().st_ino
    capsys.readouterr()
    assert _annotate(data, assets / "lam") == 0
    assert "already annotated; skipping" in capsys.readouterr().out
    assert shard.stat().st_ino == ino
    assert _annotate(data, assets / "lam", "--overwrite") == 0
    assert shard.stat().st_ino != ino and TFDSBuilderDir(out).num_episodes("train") == 5


def test_bad_inputs_are_clear_errors(assets, tmp_path, capsys):
    data = _fresh_data(assets, tmp_path)
    assert _annotate(data, assets / "lam", "--image_key", "observation/top_camera") == 2
    err = capsys.readouterr().err
    assert "image key 'observation/top_camera' not found" in err and "observation/wrist_image" in err
    # a checkpoint whose config says another size than its weights
    bad = tmp_path / "lam_bad"
    shutil.copytree(assets / "lam", bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["lam"]["latent_dim"] = 8
    (bad / "config.json").write_text(json.dumps(meta))
    assert _annotate(data, bad) == 2
    assert "different size" in capsys.readouterr().err
    assert _annotate(data, tmp_path / "missing_ckpt") == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty_run").mkdir()
    assert _annotate(data, tmp_path / "empty_run") == 2
    err = capsys.readouterr().err
    assert "no checkpoints/step_N" in err and "Errno" not in err
    assert not (data / "libero_goal_no_noops_latent").exists()
    with pytest.raises(LatentVLAError, match="already carries steps/latent_idx"):
        from latentvla.lam.annotate import _check_source

        assert _annotate(data, assets / "lam") == 0
        _check_source(TFDSBuilderDir(data / "libero_goal_no_noops_latent" / "1.0.0"), "observation/image")


def test_lam_run_dir_resolves_to_newest_checkpoint(tmp_path):
    from latentvla.lam.image_lam_checkpoint import resolve_lam_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    for n in (2, 10):
        (ckpts / f"step_{n}").mkdir(parents=True)
        (ckpts / f"step_{n}" / "config.json").write_text("{}")
    (ckpts / "step_11").mkdir()  # incomplete (no config.json): ignored
    assert resolve_lam_checkpoint(tmp_path / "run") == ckpts / "step_10"
    assert resolve_lam_checkpoint(ckpts / "step_2") == ckpts / "step_2"
    (ckpts / "latest").write_text("step_2\n")
    assert resolve_lam_checkpoint(tmp_path / "run") == resolve_lam_checkpoint(ckpts / "latest") == ckpts / "step_2"
    (ckpts / "latest").write_text("step_11\n")
    with pytest.raises(LatentVLAError, match="not a complete LAM checkpoint"):
        resolve_lam_checkpoint(tmp_path / "run")


def test_in_place_on_request(assets, tmp_path, capsys):
    data = _fresh_data(assets, tmp_path)
    src = data / "libero_goal_no_noops" / "1.0.0"
    before = {k: v for k, v in TFDSBuilderDir(src).read_episode(2).items()}
    assert _annotate(data, assets / "lam", "--in_place") == 0
    b = TFDSBuilderDir(src)
    assert b.name == "libero_goal_no_noops" and not (data / "libero_goal_no_noops_latent").exists()
    ep = b.read_episode(2)
    assert ep["latent_idx"].shape == (9, 4)
    assert all(np.array_equal(np.asarray(before[k]), np.asarray(ep[k])) if not isinstance(before[k], list)
               else before[k] == ep[k] for k in before)
    capsys.readouterr()
    assert _annotate(data, assets / "lam", "--in_place") == 0
    assert "already annotated; skipping" in capsys.readouterr().out
    assert _annotate(data, assets / "lam", "--in_place", "--overwrite") == 2
    assert "already carries steps/latent_idx" in capsys.readouterr().err
    assert not [p for p in src.parent.iterdir() if p.name.startswith(".")]
