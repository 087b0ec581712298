"""Datasets annotated by the paper's latent.py: latent labels in the records, none in features.json.

The tests write such datasets themselves: a plain synthetic dataset whose shards are rewritten the
way the reference does it (each episode's Example re-serialized with `steps/latent_idx` as a float
list of C codes per step and `steps/latent_z` as a flat float list of C·Z values per step), with
features.json and dataset_info.json left byte for byte as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latentvla.cli import main as cli_main
from latentvla.data.example import decode_example, encode_example
from latentvla.data.tfds import TFDSBuilderDir
from latentvla.data.tfrecord import iter_records, write_records
from latentvla.errors import LatentVLAError

C, Z = 4, 8
STEPS = [6, 5, 4]


def codes(e: int, T: int) -> np.ndarray:
    return (np.arange(T)[:, None] + np.arange(C)[None, :] + 3 * e) % 16


def vectors(e: int, T: int) -> np.ndarray:
    return (np.arange(T * C * Z, dtype=np.float32).reshape(T, C, Z) / 100 + e).astype(np.float32)


def reference_annotate(version_dir: Path, shards: slice = slice(None), idx_fn=codes, z_width: int = C * Z,
                       with_z: bool = True) -> None:
    """Rewrite the shards as the paper's latent.py leaves them (float lists added, schema untouched)."""
    b = TFDSBuilderDir(version_dir)
    e = 0
    for split in b.split_names:
        for i, shard in enumerate(b.shard_paths(split)):
            records = []
            for _, rec in iter_records(shard):
                raw = decode_example(rec)
                T = raw["steps/action"].size // 7
                if i in range(len(b.shard_paths(split)))[shards]:
                    raw["steps/latent_idx"] = np.asarray(idx_fn(e, T), np.float32).reshape(-1)
                    if with_z:
                        raw["steps/latent_z"] = vectors(e, T).reshape(T, -1)[:, :z_width].reshape(-1)
                records.append(encode_example(raw))
                e += 1
            write_records(shard, records)


def write_plain(root: Path, name: str = "libero_goal_no_noops") -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(root, name, num_episodes=3, steps=STEPS, image_size=16, max_shard_bytes=3_000)


@pytest.fixture
def ref_root(tmp_path) -> Path:
    root = tmp_path / "data"
    version = write_plain(root)
    assert len(TFDSBuilderDir(version).shard_paths("train")) >= 2  # several shards: every one is annotated
    before = {f: (version / f).read_bytes() for f in ("features.json", "dataset_info.json")}
    reference_annotate(version)
    assert all((version / f).read_bytes() == b for f, b in before.items())
    return root


def _vla(root: Path, keys=("latent_idx", "latent_z")):
    from latentvla.data.dataset import VLADataset

    return VLADataset(root, "libero_goal", image_size=16, extra_keys=keys, progress=False)


def test_reference_annotated_dataset_is_used_with_a_notice(ref_root, capsys):
    from latentvla.data import latent_labels
    from latentvla.data.registry import resolve_data_mix
    from latentvla.train.preflight import _latent_shapes

    latent_labels._NOTIFIED.clear()
    labels = _latent_shapes(resolve_data_mix(ref_root, "libero_goal"), ("latent_idx", "latent_z"), "la_align")
    assert (labels.codes_per_step, labels.latent_dim) == (C, Z)
    assert labels.directories == [ref_root / "libero_goal_no_noops" / "1.0.0"]
    ds = _vla(ref_root)
    s = ds[STEPS[0] + 2]  # episode 1, step 2
    assert s["latent_idx"].dtype == np.int64 and s["latent_idx"].shape == (8, C)
    np.testing.assert_array_equal(s["latent_idx"], codes(1, STEPS[1])[np.minimum(np.arange(2, 10), STEPS[1] - 1)])
    assert s["latent_z"].dtype == np.float32 and s["latent_z"].shape == (8, C, Z)
    np.testing.assert_array_equal(s["latent_z"][0], vectors(1, STEPS[1])[2])
    out = capsys.readouterr().out
    assert out.count("note:") == 1  # once per directory and process
    assert "latent_idx float32 [4] (stored as float_list, codes checked integral and in [0, 16))" in out
    assert "C = 4 (latent_idx values per step), Z = 8 (latent_z values per step / C), K = 16 (default)" in out
    assert "latentvla data declare-latents" in out
    # a re-annotation would stack a second set of labels onto the records
    from latentvla.lam.annotate import _check_source

    with pytest.raises(LatentVLAError, match="already carry steps/latent_idx, steps/latent_z.*declare-latents"):
        _check_source(TFDSBuilderDir(ref_root / "libero_goal_no_noops" / "1.0.0"), "observation/image")


def test_declare_latents_writes_the_declaration(ref_root, capsys):
    from latentvla.data import latent_labels
    from latentvla.data.features import parse_features_json

    version = ref_root / "libero_goal_no_noops" / "1.0.0"
    old = parse_features_json(json.loads((version / "features.json").read_text()))
    info = (version / "dataset_info.json").read_bytes()
    assert cli_main(["data", "declare-latents", str(version.parent)]) == 0  # the dataset dir with one version
    out = capsys.readouterr().out
    assert "declared latent_idx float32 [4]" in out and "latent_z float32 [4, 8]" in out and "3 shard(s)" in out
    b = TFDSBuilderDir(version)
    assert {k: v for k, v in b.specs.items() if k not in latent_labels.LATENT_PATHS} == old
    assert (b.specs["steps/latent_idx"].shape, b.specs["steps/latent_z"].shape) == ((C,), (C, Z))
    assert (version / "dataset_info.json").read_bytes() == info  # it lists no features: left alone
    assert not [p.name for p in version.iterdir() if p.name.startswith(".") and p.name != ".latentvla_cache"]
    ep = b.read_episode(2, keys=["latent_idx", "latent_z"])
    np.testing.assert_array_equal(ep["latent_idx"], codes(2, STEPS[2]))
    latent_labels._NOTIFIED.clear()
    s = _vla(ref_root)[0]
    assert s["latent_idx"][:, 1].tolist() == [1, 2, 3, 4, 5, 6, 6, 6]
    assert "note:" not in capsys.readouterr().out  # declared now: no notice
    assert cli_main(["data", "declare-latents", str(version)]) == 2
    err = capsys.readouterr().err
    assert "nothing to declare" in err and "already declares steps/latent_idx, steps/latent_z" in err


def test_what_cannot_be_used_says_how_to_fix_it(tmp_path, capsys):
    from latentvla.data.dataset import ActionChunkDataset

    def fresh(name: str) -> Path:
        return write_plain(tmp_path / name)

    # not integral
    v = fresh("frac")
    reference_annotate(v, idx_fn=lambda e, T: codes(e, T) + 0.5)
    with pytest.raises(LatentVLAError, match="latent_idx holds 0.5, not an integral code index"):
        _vla(tmp_path / "frac")
    assert len(ActionChunkDataset(tmp_path / "frac", "libero_goal", progress=False)) == sum(STEPS)  # baseline: fine
    # outside [0, 16) with no latent_annotation.json: the fix names --codebook_size
    v = fresh("big")
    reference_annotate(v, idx_fn=lambda e, T: codes(e, T) + 10)
    assert cli_main(["data", "declare-latents", str(v)]) == 2
    err = capsys.readouterr().err
    assert "outside [0, 16)" in err and f"declare-latents {v} --codebook_size K" in err
    info = json.loads((v / "dataset_info.json").read_text())  # a dataset_info.json that repeats the schema
    (v / "dataset_info.json").write_text(json.dumps({**info,
                                                     "features": json.loads((v / "features.json").read_text())}))
    assert cli_main(["data", "declare-latents", str(v), "--codebook_size", "32"]) == 0
    assert "in features.json and dataset_info.json" in capsys.readouterr().out
    from latentvla.data.features import parse_features_json

    assert parse_features_json(json.loads((v / "dataset_info.json").read_text())["features"]) == TFDSBuilderDir(v).specs
    # latent_z of another width: C·Z does not fit
    v = fresh("odd")
    reference_annotate(v, z_width=30)
    with pytest.raises(LatentVLAError, match=r"latent_z holds 30 values per step, not C·Z = 4·128.*--num_codes "
                                             r"C --latent_dim Z"):
        _vla(tmp_path / "odd")
    # latent_annotation.json gives C, Z and K
    v = fresh("ann")
    reference_annotate(v, idx_fn=lambda e, T: codes(e, T)[:, :2], z_width=2 * 16)
    (v / "latent_annotation.json").write_text(json.dumps({"num_codes": 2, "latent_dim": 16, "codebook_size": 16}))
    capsys.readouterr()
    s = _vla(tmp_path / "ann")[0]
    assert s["latent_idx"].shape == (8, 2) and s["latent_z"].shape == (8, 2, 16)
    assert "C = 2 (latent_annotation.json), Z = 16 (latent_annotation.json)" in capsys.readouterr().out
    # the paper's latent.py run on the first shard only
    v = fresh("half")
    reference_annotate(v, shards=slice(0, 1))
    with pytest.raises(LatentVLAError, match=r"2 of 3 episodes lack per-step key 'latent_idx' \(first: episode "
                                             r"1.*annotate every shard"):
        _vla(tmp_path / "half")
    assert cli_main(["data", "declare-latents", str(v)]) == 2
    assert "annotate every shard" in capsys.readouterr().err
    # nothing there at all
    v = fresh("plain")
    assert cli_main(["data", "declare-latents", str(v)]) == 2
    assert "nothing to declare" in capsys.readouterr().err
    with pytest.raises(LatentVLAError, match="lacks per-step key.*annotate"):
        _vla(tmp_path / "plain")
