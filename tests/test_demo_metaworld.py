"""Meta-World env, scripted-expert RLDS data (read back through the data package) and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentvla.eval.metaworld_env import configure_rendering

configure_rendering()  # MUJOCO_GL must be set before mujoco is first imported
pytest.importorskip("metaworld", reason="needs the [metaworld] extra")
pytestmark = pytest.mark.metaworld

from latentvla.errors import LatentVLAError  # noqa: E402
from latentvla.eval.metaworld_env import MetaWorldEnv  # noqa: E402
from latentvla.eval.metaworld_eval import evaluate_metaworld  # noqa: E402
from latentvla.eval.policies import PolicySpec  # noqa: E402

EXPERT, RANDOM = (PolicySpec(kind=k, platform="metaworld", seed=0) for k in ("expert", "random"))


def test_fixed_initial_states_and_cameras():
    with MetaWorldEnv("reach", image_size=32, max_episode_steps=5) as env:
        a, b, c = env.reset(3), env.reset(3), env.reset(4)
        assert a["images"].shape == (2, 32, 32, 3) and a["images"].dtype == np.uint8
        assert a["proprio"].shape == (4,) and a["proprio"].dtype == np.float32
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["proprio"], b["proprio"])
        goal = lambda: env.env._target_pos.copy()  # noqa: E731
        env.reset(3)
        g3 = goal()
        env.reset(4)
        assert not np.allclose(g3, goal())  # another seed, another goal
        assert not np.array_equal(a["images"][1], c["images"][1]) or not np.array_equal(a["images"][0], c["images"][0])
        with pytest.raises(LatentVLAError, match="4 finite numbers"):
            env.step(np.array([0.0, np.nan, 0.0, 0.0]))
        with pytest.raises(LatentVLAError, match="4 finite numbers"):
            env.step(np.zeros(7))
        steps = 0
        while True:
            _, _, done = env.step(np.zeros(4))
            steps += 1
            if done:
                break
        assert steps == 5


def test_expert_beats_random_and_evaluation_resumes(tmp_path):
    kw = dict(tasks=["reach"], episodes_per_task=2, image_size=32, max_episode_steps=80, progress=False)
    expert = evaluate_metaworld(EXPERT, out_dir=tmp_path / "expert", label="expert", num_videos=1, **kw)
    rand = evaluate_metaworld(RANDOM, out_dir=tmp_path / "random", label="random", **kw)
    assert expert["success_rate"] == 1.0 and rand["success_rate"] == 0.0
    assert expert["tasks"][0]["task"] == "reach" and expert["tasks"][0]["episodes"] == 2
    (video,) = (tmp_path / "expert" / "videos").glob("metaworld-task00-trial000-*.mp4")  # the first episode only
    assert video.stat().st_size > 0
    lines = (tmp_path / "expert" / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["seed"] != json.loads(lines[1])["seed"]
    # resume: finished episodes are not run again; a torn last line is ignored and that episode redone
    with open(tmp_path / "expert" / "episodes.jsonl", "w") as f:
        f.write(lines[0] + "\n" + lines[1][:10])

    again = evaluate_metaworld(EXPERT, out_dir=tmp_path / "expert", label="expert", **kw)
    assert again["episodes"] == 2 and again["success_rate"] == 1.0
    recs = [json.loads(x) for x in (tmp_path / "expert" / "episodes.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in recs] == [0, 1] and recs[0] == json.loads(lines[0])  # torn line dropped, ep 1 re-run


def test_policy_with_wrong_chunk_shape_is_an_error(tmp_path):
    class Bad:
        def predict_action(self, images, instruction, proprio=None):
            assert len(images) == 2 and images[0].shape == (32, 32, 3) and proprio.shape == (4,)
            return np.zeros((4, 7))

    with pytest.raises(LatentVLAError, match="shape"):
        evaluate_metaworld(Bad(), ["reach"], 1, tmp_path, image_size=32, max_episode_steps=5, progress=False)


def test_expert_dataset_reads_back_as_vla_samples(tmp_path):
    from latentvla.data.dataset import VLADataset
    from latentvla.data.tfds import TFDSBuilderDir
    from latentvla.demo.expert_data import DATASET_NAME, write_expert_dataset

    path, stats = write_expert_dataset(tmp_path, ["reach"], 1, seed=3, image_size=32, max_episode_steps=80,
                                       action_noise=0.1, progress=False)
    assert stats["reach"]["kept"] == 1
    b = TFDSBuilderDir(path)
    assert b.num_episodes() == 1
    ep = b.read_episode(0)
    T = len(ep["action"])
    assert ep["action"].shape == (T, 4) and ep["observation/state"].shape == (T, 4)
    assert ep["is_first"][0] and ep["is_last"][-1] and ep["reward"][-1] == 1.0
    assert ep["language_instruction"][0] == "move the gripper to the red target"
    assert np.abs(ep["action"]).max() <= 1.0
    ds = VLADataset(str(tmp_path), DATASET_NAME, image_size=32, train=False, image_aug=False)
    assert ds.platform.name == "metaworld" and len(ds) == T
    s = ds[T - 1]
    assert s["images"].shape == (2, 32, 32, 3) and s["proprio"].shape == (4,)
    assert s["actions"].shape == (4, 4) and s["action_pad"].tolist() == [False, True, True, True]
    assert s["instruction"] == "move the gripper to the red target"
    # PNG is lossless: the sample's primary image is the rendered frame itself
    import io

    from PIL import Image

    np.testing.assert_array_equal(s["images"][0], np.asarray(Image.open(io.BytesIO(ep["observation/image"][T - 1]))))
