"""`latentvla data convert`: RLDS -> LeRobot -> RLDS round trip, reader compatibility, training on the output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latentvla.cli import main
from latentvla.data.lerobot import LeRobotDir
from latentvla.data.tfds import TFDSBuilderDir
from latentvla.data.transforms import decode_array

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_written" / "libero_tiny_lerobot"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def _img(b) -> np.ndarray:
    out = decode_array(b)
    return out if isinstance(out, np.ndarray) else np.asarray(out.convert("RGB"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """A synthetic LIBERO RLDS dataset, its LeRobot conversion and that converted back (through the CLI)."""
    from latentvla.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("convert")
    rlds = write_synthetic_dataset(root / "rlds", "libero_goal_no_noops", num_episodes=3, steps=[12, 10, 9, 6],
                                   image_size=64, val_episodes=1)
    lerobot = root / "lerobot" / "libero_goal_no_noops"
    back = root / "back" / "libero_goal_no_noops"
    assert main(["data", "convert", "--from", str(rlds.parent), "--to", str(lerobot), "--format", "lerobot"]) == 0
    assert main(["data", "convert", "--from", str(lerobot), "--to", str(back), "--format", "rlds"]) == 0
    return {"rlds": rlds, "lerobot": lerobot, "back": back / "1.0.0", "root": root}


def test_round_trip_keeps_actions_states_instructions_exact(converted):
    a, b = TFDSBuilderDir(converted["rlds"]), TFDSBuilderDir(converted["back"])
    assert set(b.specs) == set(a.specs) - {"episode_metadata/file_path"}
    assert b.split_names == a.split_names == ["train", "val"] and b.num_episodes("val") == 1
    for split, e in [("train", 0), ("train", 1), ("train", 2), ("val", 0)]:
        ea, eb = a.read_episode(e, split), b.read_episode(e, split)
        for k in ("action", "observation/state", "observation/joint_state", "reward", "discount", "is_first",
                  "is_last", "is_terminal"):
            assert ea[k].dtype == eb[k].dtype and np.array_equal(ea[k], eb[k]), k
        assert ea["language_instruction"] == eb["language_instruction"]
        for cam in ("observation/image", "observation/wrist_image"):  # AV1 crf 30 + JPEG: codec loss only
            p = [psnr(_img(x), _img(y)) for x, y in zip(ea[cam], eb[cam], strict=True)]
            assert min(p) > 25 and np.mean(p) > 28, (cam, min(p))


def test_lerobot_output_reads_with_our_reader(converted):
    a, d = TFDSBuilderDir(converted["rlds"]), LeRobotDir(converted["lerobot"])
    info = json.loads((d.path / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "panda" and info["fps"] == 10
    assert list(d.features)[:2] == ["observation.images.image", "observation.images.wrist_image"]  # primary first
    assert d.features["observation.images.image"]["info"]["video.codec"] == "av1"
    assert d.features["is_first"] == {"dtype": "bool", "shape": [1], "names": None}
    assert info["splits"] == {"train": "0:3", "val": "3:4"} and d.num_episodes("val") == 1
    for e in range(3):
        ea, ed = a.read_episode(e), d.read_episode(e)
        np.testing.assert_array_equal(ed["action"], ea["action"])
        np.testing.assert_array_equal(ed["observation.state"], ea["observation/state"])
        assert ed["task"] == ea["language_instruction"][0]
        frames = d.frames(e, [0, len(ea["action"]) - 1], "observation.images.wrist_image")
        assert min(psnr(frames[0], _img(ea["observation/wrist_image"][0])),
                   psnr(frames[1], _img(ea["observation/wrist_image"][-1]))) > 25


@pytest.mark.parametrize("fixture", ["libero_tiny_lerobot", "libero_tiny_lerobot_v21"])
def test_lerobot_fixture_to_rlds(tmp_path, fixture):
    src = FIXTURE.parent / fixture
    out = tmp_path / "rlds" / "libero_tiny"
    assert main(["data", "convert", "--from", str(src), "--to", str(out), "--format", "rlds",
                 "--image_encoding", "png"]) == 0
    b, d = TFDSBuilderDir(out / "1.0.0"), LeRobotDir(src)
    assert b.specs["steps/observation/image"].shape == (256, 256, 3) and b.specs["steps/is_first"].dtype == "bool"
    for e in range(3):
        eb, ed = b.read_episode(e), d.read_episode(e)
        np.testing.assert_array_equal(eb["observation/state"], ed["observation.state"])
        assert eb["language_instruction"] == [ed["task"]] * len(ed["action"])
        assert eb["is_first"].tolist() == [True] + [False] * (len(ed["action"]) - 1)
        np.testing.assert_array_equal(np.stack([_img(x) for x in eb["observation/image"]]),
                                      ed["observation.images.image"])  # PNG: the decoded frames exactly


def test_convert_errors(tmp_path, converted, capsys):
    cases = [(["--from", str(converted["lerobot"]), "--to", str(tmp_path / "x"), "--format", "lerobot"],
              "is already lerobot"),
             (["--from", str(converted["lerobot"]), "--to", str(tmp_path / "x")], "--format is required"),
             (["--from", str(tmp_path / "missing"), "--to", str(tmp_path / "x"), "--format", "rlds"], "not found"),
             (["--from", str(converted["rlds"]), "--to", str(converted["lerobot"]), "--format", "lerobot"],
              "already exists")]
    for argv, msg in cases:
        assert main(["data", "convert", *argv]) == 2
        assert msg in capsys.readouterr().err, msg
    assert not (tmp_path / "x").exists()


def test_baseline_trains_one_step_on_converted_lerobot(converted, tiny_vlm_dir, tmp_path):
    from test_train_vla import paper_flags

    runs = tmp_path / "runs"
    flags = paper_flags(tiny_vlm_dir, converted["lerobot"].parent, runs, "baseline", max_steps=1, save_step=1)
    assert main(["train", *flags]) == 0
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert (run / "checkpoints" / "step_1").is_dir()
    stats = json.loads((run / "dataset_statistics.json").read_text())
    assert "libero_goal_no_noops" in stats
