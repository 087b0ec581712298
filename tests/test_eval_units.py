"""Simulator-independent parts of the evaluator: conversions, rollout loop, results, workers, videos."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from latentvla.errors import LatentVLAError
from latentvla.eval.checkpoint_info import check_compat_flags, infer_policy_scope
from latentvla.eval.policies import RandomPolicy, ZeroPolicy, parse_host_port
from latentvla.eval.results import EpisodeLog, check_run_meta, format_table, summarize
from latentvla.eval.rollout import EpisodeSpec, check_action_chunk, run_episode
from latentvla.eval.transforms import convert_actions_to_env, flip_image, gripper_dataset_to_env, quat_to_axis_angle
from latentvla.eval.workers import run_in_workers, split_contiguous
from latentvla.robots import get_platform


def test_flip_image_rotates_180_degrees():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = flip_image(img)
    assert out.shape == img.shape and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out[0, 0], img[1, 2]) and np.array_equal(out[1, 2], img[0, 0])
    assert np.array_equal(flip_image(out), img)
    with pytest.raises(LatentVLAError, match="HxWxC"):
        flip_image(np.zeros((4, 4)))


def test_gripper_conversion_dataset_to_env():
    # dataset: 1 = open, 0 = close  ->  env: -1 = open, +1 = close, binarized by sign
    g = np.array([1.0, 0.0, 0.9, 0.1, 0.5, 0.49])
    assert gripper_dataset_to_env(g).tolist() == [-1, 1, -1, 1, -1, 1]
    assert np.allclose(gripper_dataset_to_env(g, binarize=False), [-1, 1, -0.8, 0.8, 0, 0.02])
    actions = np.array([[0.1, -0.2, 0.3, 0, 0, 0, 1.0], [0.5, 0, 0, 0, 0, 0, 0.0]])
    env = convert_actions_to_env(actions, gripper_dim=6)
    assert env[:, 6].tolist() == [-1.0, 1.0] and np.array_equal(env[:, :6], actions[:, :6])
    assert actions[0, 6] == 1.0  # input not modified


def test_quat_to_axis_angle():
    assert np.allclose(quat_to_axis_angle([0, 0, 0, 1]), 0)
    half = math.pi / 4  # 90 degrees about z
    aa = quat_to_axis_angle([0, 0, math.sin(half), math.cos(half)])
    assert np.allclose(aa, [0, 0, math.pi / 2])


def test_check_action_chunk_errors():
    assert check_action_chunk(np.zeros((8, 7)), 7).shape == (8, 7)
    assert check_action_chunk(np.zeros(7), 7).shape == (1, 7)
    with pytest.raises(LatentVLAError, match=r"expected \[chunk_len, 7\]"):
        check_action_chunk(np.zeros((8, 6)), 7)
    with pytest.raises(LatentVLAError, match="non-finite"):
        check_action_chunk(np.full((2, 7), np.nan), 7)


class _LineEnv:
    """A 1-D point that must reach x >= 1: enough physics to test the loop itself."""

    action_dim = 2

    def __init__(self):
        self.sent = []

    def reset(self, episode):
        self.x = 0.0
        return self.x

    def step(self, action):
        self.sent.append(np.array(action))
        self.x += float(action[0])
        return self.x, self.x >= 1.0

    def settle_action(self):
        return np.zeros(2)

    def policy_inputs(self, obs):
        return [np.zeros((4, 4, 3), np.uint8)], np.array([obs], np.float32)

    def to_env_action(self, action):
        return np.asarray(action) * 2

    def video_frame(self, obs):
        return np.full((4, 4, 3), int(obs * 10) % 255, np.uint8)


class _ChunkPolicy:
    def __init__(self):
        self.calls = 0

    def predict_action(self, images, instruction, proprio=None):
        self.calls += 1
        return np.full((4, 2), 0.0625)


def test_run_episode_open_loop_chunks_and_success():
    env, policy = _LineEnv(), _ChunkPolicy()
    ep = EpisodeSpec("s", 0, "t", "go", 0, seed=3)
    res, frames = run_episode(env, policy, ep, max_steps=100, num_settle_steps=3, num_open_loop_steps=2,
                              record_video=True)
    assert res.success and res.steps == 8  # 0.125 per step after to_env_action
    assert policy.calls == 4  # re-plans every 2 executed actions
    assert len(env.sent) == 3 + 8 and len(frames) == 9
    res, _ = run_episode(_LineEnv(), _ChunkPolicy(), ep, max_steps=4, num_settle_steps=0)
    assert not res.success and res.steps == 4 and res.policy_calls == 1


def test_random_and_zero_policies():
    p = get_platform("libero")
    a = RandomPolicy(p, seed=1).predict_action([], "x")
    assert a.shape == (8, 7) and set(np.unique(a[:, 6])) <= {0.0, 1.0} and np.all(np.abs(a) <= 1)
    r = RandomPolicy(p)
    r.reset(5)
    first = r.predict_action([], "x")
    r.reset(5)
    assert np.array_equal(first, r.predict_action([], "x"))
    z = ZeroPolicy(p).predict_action([], "x")
    assert np.all(z[:, :6] == 0) and np.all(z[:, 6] == 1.0)
    assert parse_host_port("127.0.0.1:8000") == ("127.0.0.1", 8000)
    with pytest.raises(LatentVLAError, match="HOST:PORT"):
        parse_host_port("localhost")


def _rec(task, trial, success, suite="libero_goal"):
    return {"suite": suite, "task_id": task, "task": f"task{task}", "instruction": "do", "trial": trial,
            "success": success, "steps": 10, "seconds": 1.0}


def test_episode_log_drops_truncated_tail_and_rejects_corruption(tmp_path):
    log = EpisodeLog(tmp_path / "episodes.jsonl")
    log.append(_rec(0, 0, True))
    log.append(_rec(0, 1, False))
    with open(log.path, "a") as f:
        f.write('{"suite": "libero_goal", "task_id": 0, "tri')  # killed mid-write
    recs = log.load()
    assert [r["trial"] for r in recs] == [0, 1]
    assert log.path.read_text().endswith("\n") and len(log.path.read_text().splitlines()) == 2
    with open(log.path, "a") as f:
        f.write(json.dumps(_rec(0, 2, True)))  # complete JSON, killed before the newline
    assert len(log.load()) == 3
    log.append(_rec(0, 3, True))
    assert [r["trial"] for r in log.load()] == [0, 1, 2, 3]
    log.path.write_text("not json\n" + json.dumps(_rec(0, 0, True)) + "\n")
    with pytest.raises(LatentVLAError, match="line 1"):
        log.load()
    log.path.write_text(json.dumps({"suite": "x"}) + "\n")
    with pytest.raises(LatentVLAError, match="lacks key"):
        log.load()


def test_summary_table_and_run_meta(tmp_path):
    recs = [_rec(0, 0, True), _rec(0, 1, False), _rec(1, 0, True), _rec(1, 1, True)]
    s = summarize(recs, meta={"seed": 7}, expected_episodes=6)
    assert s["episodes"] == 4 and s["successes"] == 3 and s["success_rate"] == 0.75 and not s["complete"]
    assert [t["success_rate"] for t in s["tasks"]] == [0.5, 1.0]
    assert s["suites"][0]["success_rate"] == 0.75
    table = format_table(s)
    assert "task0" in table and "75.0%" in table and "incomplete" in table
    check_run_meta(tmp_path, {"seed": 7, "suite": "a", "note": 1}, keys=("seed", "suite"))
    check_run_meta(tmp_path, {"seed": 7, "suite": "a", "note": 2}, keys=("seed", "suite"))
    with pytest.raises(LatentVLAError, match="seed: 7 -> 8"):
        check_run_meta(tmp_path, {"seed": 8, "suite": "a"}, keys=("seed", "suite"))


def test_checkpoint_compat_and_scope():
    assert infer_policy_scope('["libero_goal"]', "libero_goal") == "one_per_suite"
    assert infer_policy_scope(["libero_goal_latent"], "libero_goal") == "one_per_suite"
    assert infer_policy_scope('["libero_goal", "libero_10"]', "libero_goal") == "one_for_all_suites"
    assert infer_policy_scope(None, "libero_goal") == "unknown"
    check_compat_flags({"vla_id": "la_tok"}, {"vla_id": "la_tok", "use_proprio": None}, "ckpt")
    with pytest.raises(LatentVLAError, match="--vla_id baseline does not match"):
        check_compat_flags({"vla_id": "la_tok"}, {"vla_id": "baseline"}, "ckpt")


def _emit_squares(payload, emit):
    for x in payload:
        if x < 0:
            raise LatentVLAError(f"negative input {x}")
        emit({"x": x, "y": x * x})


def test_workers_split_and_run():
    assert split_contiguous(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split_contiguous([1], 4) == [[1]]
    got = []
    run_in_workers(_emit_squares, [[1, 2], [3]], got.append)
    assert sorted(r["y"] for r in got) == [1, 4, 9]
    with pytest.raises(LatentVLAError, match="negative input -1"):
        run_in_workers(_emit_squares, [[1], [-1]], got.append)


def test_write_mp4(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    from latentvla.eval.video import write_mp4

    frames = [np.full((32, 48, 3), i * 20, np.uint8) for i in range(5)]
    path = write_mp4(tmp_path / "v" / "ep.mp4", frames, fps=10)
    assert path.is_file() and path.stat().st_size > 0
    assert [p.name for p in path.parent.iterdir()] == ["ep.mp4"]
    with pytest.raises(LatentVLAError, match="no frames"):
        write_mp4(tmp_path / "empty.mp4", [])


def test_init_states_npz_and_legacy_torch_pickle_load_safely(tmp_path):
    import torch

    from latentvla.eval.libero_env import load_init_states

    states = np.random.default_rng(0).normal(size=(3, 9))
    np.savez(tmp_path / "task.pruned_init.npz", states=states)
    assert np.array_equal(load_init_states(tmp_path / "task.pruned_init"), states)  # legacy name -> NPZ copy
    torch.save(states, tmp_path / "legacy.pruned_init")  # a torch pickle of a numpy array
    assert np.array_equal(load_init_states(tmp_path / "legacy.pruned_init"), states)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pruned_init")
    with pytest.raises(LatentVLAError, match="cannot read LIBERO initial states"):
        load_init_states(tmp_path / "evil.pruned_init")
    with pytest.raises(LatentVLAError, match="not found"):
        load_init_states(tmp_path / "missing.pruned_init")


def test_configure_rendering_sets_both_variables(monkeypatch):
    from latentvla.eval.libero_env import configure_rendering

    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    # set, then delete: monkeypatch restores a variable only if it recorded it, and configure_rendering
    # sets PYOPENGL_PLATFORM, which must not leak into later tests (Meta-World would see osmesa vs egl)
    monkeypatch.setenv("PYOPENGL_PLATFORM", "")
    monkeypatch.delenv("PYOPENGL_PLATFORM")
    assert configure_rendering("auto") == "osmesa"
    import os

    assert os.environ["PYOPENGL_PLATFORM"] == "osmesa"
    with pytest.raises(LatentVLAError, match="MUJOCO_GL=osmesa is set"):
        configure_rendering("egl")
    with pytest.raises(LatentVLAError, match="expected auto, egl or osmesa"):
        configure_rendering("glx")


def test_decode_tokens_reaches_the_policy_factory_and_needs_la_tok(tmp_path, monkeypatch):
    """`eval libero --decode_tokens`: the flag (and --action_tokenizer_ckpt) reach the policy spec the
    workers build from; a non-la_tok checkpoint is refused before any policy or simulator is loaded."""
    import latentvla.eval.libero_eval as libero_eval
    from latentvla.eval.configuration_eval import LiberoEvalConfig
    from latentvla.eval.policies import PolicySpec, build_policy

    for name in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "LP_NUM_THREADS"):  # configure_rendering sets them
        monkeypatch.setenv(name, "egl" if name != "LP_NUM_THREADS" else "1")
    specs = []

    class Built(Exception):
        pass

    def fake_build(spec):
        specs.append(spec)
        raise Built

    monkeypatch.setattr(libero_eval, "build_policy", fake_build)

    def checkpoint(vla_id):
        d = tmp_path / vla_id
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"format": "latentvla-policy", "vla": {"vla_id": vla_id},
                                                   "platform": {"name": "libero"}, "train": {}}))
        return str(d)

    def cfg(ckpt, **kw):
        return LiberoEvalConfig(pretrained_checkpoint=ckpt, output_dir=str(tmp_path / "out"),
                                log_dir=str(tmp_path / "logs"), **kw)

    with pytest.raises(Built):
        libero_eval.run_libero_eval(cfg(checkpoint("la_tok"), decode_tokens=True,
                                        action_tokenizer_ckpt="/tok/step_9.pt"))
    (spec,) = specs
    assert spec.kind == "vla" and spec.decode_tokens and spec.action_tokenizer_ckpt == "/tok/step_9.pt"
    with pytest.raises(Built):
        libero_eval.run_libero_eval(cfg(str(tmp_path / "la_tok")))
    assert not specs[-1].decode_tokens  # off by default
    with pytest.raises(LatentVLAError, match="--decode_tokens needs a la_tok checkpoint.*'baseline'"):
        libero_eval.run_libero_eval(cfg(checkpoint("baseline"), decode_tokens=True))
    assert len(specs) == 2  # refused before the policy was built
    with pytest.raises(LatentVLAError, match="--decode_tokens needs a local la_tok checkpoint"):
        cfg("", policy="random", decode_tokens=True).validate()
    with pytest.raises(LatentVLAError, match="start `latentvla serve` with --decode_tokens True"):
        cfg("", policy_server="127.0.0.1:8000", decode_tokens=True).validate()
    with pytest.raises(LatentVLAError, match="--action_tokenizer_ckpt is only used with --decode_tokens True"):
        cfg(str(tmp_path / "la_tok"), action_tokenizer_ckpt="/tok/step_9.pt").validate()
    with pytest.raises(LatentVLAError, match="--decode_tokens applies to a local --policy vla"):
        build_policy(PolicySpec(kind="zero", decode_tokens=True))


def test_serve_decode_tokens_options():
    from latentvla.serve.configuration_serve import ServeConfig

    with pytest.raises(LatentVLAError, match="--decode_tokens needs --policy vla.*--policy zero"):
        ServeConfig(policy="zero", decode_tokens=True).validate()
    with pytest.raises(LatentVLAError, match="--action_tokenizer_ckpt is only used with --decode_tokens True"):
        ServeConfig(pretrained_checkpoint="x", action_tokenizer_ckpt="t.pt").validate()
    ServeConfig(pretrained_checkpoint="x", decode_tokens=True, action_tokenizer_ckpt="t.pt").validate()
