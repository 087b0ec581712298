"""Paper-compatible shims: `main.py fit --config lam-stage-2.yaml` and `latent.py FILE.tfrecord --lam_path`."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import yaml

from latentvla.cli import main as cli_main
from latentvla.data.tfds import TFDSBuilderDir
from latentvla.data.tfrecord import iter_records

SHIMS = Path(__file__).resolve().parent.parent / "data_preprocess" / "image_based_lam"


def _shim(name: str):
    return runpy.run_path(str(SHIMS / name), run_name="shim")["main"]


def test_main_fit_config_trains_and_latent_py_annotates_one_shard(tmp_path):
    from latentvla.data.example import decode_example
    from latentvla.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", name="libero_goal_no_noops", num_episodes=3, steps=6,
                                   image_size=56)
    assert cli_main(["tiny-dino", str(tmp_path / "dino"), "--num_layers", "1"]) == 0
    cfg = yaml.safe_load((SHIMS / "config" / "lam-stage-2.yaml").read_text())  # the shipped example
    cfg["model"].update(lam_path=None, dino_path=str(tmp_path / "dino"), lam_model_dim=32, lam_latent_dim=16,
                        lam_num_latents=8, lam_enc_blocks=1, lam_dec_blocks=1, lam_num_heads=2, pair_offset=2)
    cfg["data"].update(data_root_dir=str(tmp_path / "data"), data_mix="libero_goal", batch_size=4, resolution=56)
    cfg["trainer"].update(max_steps=2, log_every_n_steps=1)
    cfg["trainer"]["callbacks"][0]["init_args"].update(dirpath=str(tmp_path / "logs" / "run"), every_n_train_steps=2)
    (tmp_path / "lam.yaml").write_text(yaml.safe_dump(cfg))
    assert _shim("main.py")(["fit", "--config", str(tmp_path / "lam.yaml"), "--trainer.max_steps", "3"]) == 0
    ckpt = tmp_path / "logs" / "run" / "checkpoints" / "step_3"
    assert (ckpt / "model.safetensors").is_file()

    shard = TFDSBuilderDir(data).shard_paths("train")[0]
    latent = _shim("latent.py")
    assert latent([str(shard), "--lam_path", str(ckpt), "--k", "11"]) == 0
    out = shard.parent / "output" / shard.name
    for (_, a), (_, b) in zip(iter_records(shard), iter_records(out), strict=True):
        ra, rb = decode_example(a), decode_example(b)
        T = len(ra["steps/action"]) // 7
        assert rb["steps/latent_idx"].shape == (T * 4,) and rb["steps/latent_z"].shape == (T * 4 * 16,)
        assert ra["steps/observation/image"] == rb["steps/observation/image"]
        assert np.array_equal(ra["steps/action"], rb["steps/action"])
    assert latent([str(shard), "--lam_path", str(tmp_path / "nope")]) == 0  # existing output: skipped
    assert latent([str(shard), "--lam_path", str(tmp_path / "nope"), "--overwrite"]) == 2


def test_main_py_maps_the_papers_goal_image_step():
    translate = runpy.run_path(str(SHIMS / "main.py"), run_name="shim")["translate"]
    for cfg in ({"model": {"goal_image_step": 20}}, {"data": {"goal_image_step": 20}}):
        argv, _, ignored = translate(cfg)
        assert argv == ["--pair_offset", "20"] and ignored == []
