"""Training on LeRobot data: `latentvla train` one step per variant on the lerobot-written fixture
(la_* variants read latent labels from `<name>_latent`, a copy with `latent_idx` / `latent_z`
columns), the action tokenizer and image-LAM datasets, and `data stats|inspect` JSON shapes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from lerobot_helpers import add_latent_columns

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from latentvla.cli import main  # noqa: E402

NAME = "libero_tiny_lerobot"


@pytest.fixture
def root(lerobot_root):
    add_latent_columns_copy = lerobot_root / f"{NAME}_latent"
    shutil.copytree(lerobot_root / NAME, add_latent_columns_copy)
    add_latent_columns(add_latent_columns_copy, num_codes=4, latent_dim=128, codebook_size=16)
    return lerobot_root


def _flags(vlm, data, runs, vla_id, **over) -> list[str]:
    flags = {"seed": 42, "run_root_dir": runs, "vla_id": vla_id, "vlm_path": vlm, "vlm_model_id": "qwen3vl_tiny",
             "default_image_size": 32, "data_root_dir": data, "data_mix": NAME, "window_size": 8,
             "use_latent": vla_id != "baseline", "max_steps": 1, "global_batch_size": 2, "per_device_batch_size": 2,
             "save_step": 1, "save_checkpoint": True, "lora_rank": 4, "num_workers": 0, "progress": False,
             "use_wandb": False, **over}
    return [x for k, v in flags.items() if v is not None for x in (f"--{k}", str(v))]


@pytest.mark.parametrize("vla_id", ["baseline", "la_tok", "la_align", "la_direct", "la_cond"])
def test_every_variant_trains_on_lerobot(root, tmp_path, tiny_vlm_dir, tokenizer_ckpt, vla_id, capsys):
    over = {"action_tokenizer_ckpt": tokenizer_ckpt} if vla_id == "la_tok" else {}
    runs = tmp_path / "runs"
    assert main(["train", *_flags(tiny_vlm_dir, root, runs, vla_id, **over)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    read = root / (NAME if vla_id in ("baseline", "la_tok") else f"{NAME}_latent")
    assert f"{NAME} ({read})" in out, out
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    stats = json.loads((run / "dataset_statistics.json").read_text())
    assert stats.keys() == {NAME} and stats[NAME]["num_transitions"] == 36
    assert (run / "checkpoints" / "step_1" / "COMPLETE").is_file()


def test_latent_labels_reach_the_samples(root):
    from latentvla.data.dataset import VLADataset
    from latentvla.data.lerobot import LeRobotDir

    ds = VLADataset(root, NAME, image_size=16, extra_keys=("latent_idx", "latent_z"), progress=False)
    assert ds.resolved[0].path == root / f"{NAME}_latent"  # found the annotated sibling on its own
    s = ds[10]  # episode 0, step 10 of 12: the chunk of 8 repeats the last step past the end
    ref = LeRobotDir(root / f"{NAME}_latent").read_episode(0, keys=["latent_idx", "latent_z"])
    assert s["latent_idx"].dtype == np.int64 and s["latent_idx"].shape == (8, 4)
    assert s["latent_z"].dtype == np.float32 and s["latent_z"].shape == (8, 4, 128)
    assert np.array_equal(s["latent_idx"][:2], ref["latent_idx"][10:12])
    assert np.array_equal(s["latent_idx"][2:], np.repeat(ref["latent_idx"][11:12], 6, 0))
    assert np.array_equal(s["latent_z"][1], ref["latent_z"][11])
    again = VLADataset(root, f"{NAME}_latent", image_size=16, extra_keys=("latent_idx",), progress=False)
    assert isinstance(again.indexes[0].step_arrays["latent_z"], np.memmap)  # cached index: memory-mapped
    assert np.array_equal(again[10]["latent_idx"], s["latent_idx"])


def test_flat_latent_z_column_reads_the_same(lerobot_root):
    from latentvla.data.lerobot import LeRobotDir

    for nested in (True, False):
        d = lerobot_root / f"copy_{nested}"
        shutil.copytree(lerobot_root / NAME, d)
        add_latent_columns(d, num_codes=2, latent_dim=3, nested=nested)
    a, b = (LeRobotDir(lerobot_root / f"copy_{n}").read_episode(1, keys=["latent_z"])["latent_z"]
            for n in (True, False))
    assert a.shape == (15, 2, 3) and np.array_equal(a, b)


def test_action_tokenizer_and_image_lam_datasets(root):
    from latentvla.data.dataset import ActionChunkDataset, FramePairDataset

    chunks = ActionChunkDataset(root, NAME, chunk_len=4, progress=False)
    assert len(chunks) == 36 and chunks[0]["actions"].shape == (4, 7)
    pairs = FramePairDataset(root, NAME, pair_offset=2, image_size=16, progress=False)
    a, b = pairs[0]["frames"], pairs[2]["frames"]
    assert np.array_equal(a[1], b[0])  # frame t + 2 of the first pair is frame t of the third


def test_data_commands_json_shape_matches_rlds(root, vla_data_root, capsys):
    def run(*args):
        assert main(["data", *args]) == 0
        return json.loads(capsys.readouterr().out)

    le = run("stats", "--data_root_dir", str(root), "--data_mix", NAME)[NAME]
    rl = run("stats", "--data_root_dir", str(vla_data_root), "--data_mix", "libero_goal")["libero_goal_no_noops"]
    assert le.keys() == rl.keys() and le["action"].keys() == rl["action"].keys()
    assert le["num_transitions"] == 36 and le["platform"] == "libero"
    le = run("inspect", "--data_root_dir", str(root), "--data_mix", NAME, "--episode", "1")[NAME]
    rl = run("inspect", "--data_root_dir", str(vla_data_root), "--data_mix", "libero_goal", "--episode", "1")
    rl = rl["libero_goal_no_noops"]
    assert le.keys() == rl.keys() and le["episode"].keys() == rl["episode"].keys()
    assert [e["length"] for e in le["episodes"]] == [12, 15, 9]
    assert le["episode"]["image_shapes"] == {"observation.images.image": [256, 256, 3],
                                             "observation.images.wrist_image": [256, 256, 3]}
    assert np.asarray(le["episode"]["actions"]).shape == (15, 7) and np.asarray(le["episode"]["proprio"]).shape == (
        15, 8)


def test_lam_trainers_run_on_lerobot(lerobot_root, tmp_path):
    """`lam action-train` and `lam image-train` (ActionChunkDataset / FramePairDataset) on the v2.1 copy."""
    name = "libero_tiny_lerobot_v21"
    out = tmp_path / "tok"
    assert main(["lam", "action-train", "--data_root_dir", str(lerobot_root), "--data_mix", name,
                 "--results_dir", str(out), "--num_steps", "2", "--batch_size", "4", "--save_every", "2",
                 "--log_every", "1", "--device", "cpu", "--eval_batches", "1"]) == 0
    assert json.loads((out / "dataset_statistics.json").read_text()).keys() == {name}
    assert main(["tiny-dino", str(tmp_path / "dino"), "--num_layers", "1", "--num_heads", "1"]) == 0
    assert main(["lam", "image-train", "--data_root_dir", str(lerobot_root), "--data_mix", name,
                 "--dino_path", str(tmp_path / "dino"), "--results_dir", str(tmp_path / "runs"), "--run_id", "r",
                 "--batch_size", "2", "--model_dim", "32", "--enc_blocks", "1", "--dec_blocks", "1", "--num_heads",
                 "2", "--latent_dim", "16", "--codebook_size", "8", "--pair_offset", "2", "--image_size", "56",
                 "--max_steps", "2", "--log_every", "1", "--save_every", "2"]) == 0
    assert (tmp_path / "runs" / "r" / "checkpoints" / "step_2" / "COMPLETE").is_file()
