"""The shared evaluation engine: a simulator registered in this file runs through it (the seam a new
simulator uses), and Meta-World evaluation runs through it from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentvla.errors import LatentVLAError
from latentvla.eval.engine import EvalRun, evaluate_episodes, get_simulator, register_simulator
from latentvla.eval.policies import PolicySpec
from latentvla.eval.rollout import EpisodeSpec


class _LineEnv:
    """A point on a line that must reach +1 (success) from its start; 1-dim proprio, one 8x8 camera."""

    action_dim = 7  # the libero platform's, so the shared baseline policies fit

    def __init__(self, start: float):
        self.start, self.x = start, start

    def reset(self, episode):
        self.x = self.start + 0.01 * episode.trial
        return self.x

    def step(self, action):
        self.x += 0.5 * float(action[0])
        return self.x, self.x >= 1.0

    def settle_action(self):
        return np.zeros(7)

    def policy_inputs(self, obs):
        return [np.full((8, 8, 3), 0, np.uint8)], np.full(8, obs, np.float32)

    def to_env_action(self, action):
        return np.asarray(action)

    def video_frame(self, obs):
        return np.full((16, 16, 3), 128, np.uint8)

    def close(self):
        pass


@register_simulator("toy_line")
class _ToySimulator:
    def __init__(self, start: float = 0.0):
        self.start = start

    def setup(self):
        pass

    def make_env(self, episode):
        return _LineEnv(self.start)


class _Forward:
    """Always +1 on the first dim: every toy episode succeeds after two steps."""

    needs_images = False

    def predict_action(self, images, instruction, proprio=None):
        assert len(images) == 1 and proprio.shape == (8,)
        return np.array([[1.0, 0, 0, 0, 0, 0, 1.0]])


def _run(out, policy=None, **kw):
    episodes = [EpisodeSpec("toy", t, f"task{t}", "go right", k, seed=100 * t + k) for t in range(2) for k in range(3)]
    return EvalRun("toy_line", episodes, str(out), max_steps=5, policy_spec=PolicySpec(kind="zero"),
                   options={"start": 0.0}, meta={"suite": "toy", "seed": 1}, resume_keys=("suite", "seed"),
                   progress=False, policy=policy, **kw)


def test_a_simulator_registered_here_runs_through_the_shared_engine(tmp_path):
    summary = evaluate_episodes(_run(tmp_path / "fwd", _Forward(), num_videos=1))
    assert summary["episodes"] == 6 and summary["success_rate"] == 1.0 and summary["complete"]
    assert [t["task"] for t in summary["tasks"]] == ["task0", "task1"] and summary["tasks"][0]["steps"] == 6
    assert sorted(p.name for p in (tmp_path / "fwd" / "videos").iterdir()) == [
        "toy-task00-trial000-success.mp4", "toy-task01-trial000-success.mp4"]
    # the shared zero policy (built from the spec): no motion, never a success
    zero = evaluate_episodes(_run(tmp_path / "zero"))
    assert zero["episodes"] == 6 and zero["success_rate"] == 0.0 and zero["env_steps"] == 30
    # resume: finished episodes are kept, a changed outcome-deciding setting is refused
    log = tmp_path / "zero" / "episodes.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:4]) + "\n")
    again = evaluate_episodes(_run(tmp_path / "zero"))
    assert again["episodes"] == 6 and log.read_text().splitlines()[:4] == lines[:4]
    changed = _run(tmp_path / "zero")
    changed.meta["seed"] = 2
    with pytest.raises(LatentVLAError, match="different settings.*seed"):
        evaluate_episodes(changed)
    with pytest.raises(LatentVLAError, match="unknown simulator 'nope'.*metaworld.*toy_line"):
        get_simulator("nope")


def test_expert_policy_needs_a_simulator_with_an_expert(tmp_path):
    run = _run(tmp_path / "expert")
    run.policy_spec = PolicySpec(kind="expert")
    with pytest.raises(LatentVLAError, match="no scripted expert"):
        evaluate_episodes(run)


def test_eval_metaworld_command_runs_through_the_shared_code(tmp_path, capsys):
    from latentvla.eval.metaworld_env import configure_rendering

    configure_rendering()
    pytest.importorskip("metaworld", reason="needs the [metaworld] extra")
    from latentvla.cli import main

    out = tmp_path / "mw"
    argv = ["eval", "metaworld", "--policy", "expert", "--tasks", "reach", "--num_trials_per_task", "2",
            "--max_steps", "60", "--image_size", "32", "--output_dir", str(out)]
    assert main(argv) == 0
    assert "TOTAL" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["success_rate"] == 1.0
    assert summary["run"]["policy"] == "expert" and summary["suites"][0]["suite"] == "metaworld"
    assert main(argv) == 0  # resumed: nothing left to run
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    assert main([*argv, "--seed", "8"]) == 2  # other seeds in the same dir: refused
    assert "different settings" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "mw8"), "--seed", "8"]) == 0
    assert main(["eval", "compare", str(out), str(tmp_path / "mw8")]) == 2  # other initial states: not paired
    assert "not the same initial states" in capsys.readouterr().err


def test_eval_metaworld_runs_a_trained_checkpoint(tmp_path, tiny_vlm_dir):
    """A (tiny, random) Meta-World policy checkpoint, loaded through its PolicyIO, in the shared Meta-World eval."""
    from latentvla.eval.metaworld_env import configure_rendering

    configure_rendering()
    pytest.importorskip("metaworld", reason="needs the [metaworld] extra")
    from latentvla.cli import main
    from latentvla.robots import get_platform
    from latentvla.vla.checkpoint import save_policy_checkpoint
    from latentvla.vla.configuration_vla import VLAConfig
    from latentvla.vla.modeling_vla import LatentVLA

    stats = {"mean": [0.0] * 4, "std": [0.5] * 4, "min": [-1.0] * 4, "max": [1.0] * 4, "q01": [-1.0] * 4,
             "q99": [1.0] * 4, "mask": [True] * 4}
    model = LatentVLA.from_config(VLAConfig(vlm_path=str(tiny_vlm_dir), default_image_size=64),
                                  get_platform("metaworld"), device="cpu")
    ckpt = save_policy_checkpoint(tmp_path / "step_1", model, {"image_resample": "bicubic"},
                                  {"metaworld_demo": {"action": stats, "proprio": stats}})
    out = tmp_path / "mw"
    assert main(["eval", "metaworld", "--pretrained_checkpoint", str(ckpt), "--tasks", "reach",
                 "--num_trials_per_task", "1", "--max_steps", "6", "--image_size", "48", "--num_videos", "1",
                 "--device", "cpu", "--output_dir", str(out)]) == 0
    (rec,) = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert rec["steps"] == 6 and rec["policy_calls"] == 2 and rec["task"] == "reach"  # chunks of 4, re-planned once
    assert (out / rec["video"]).stat().st_size > 0
    assert json.loads((out / "run.json").read_text())["checkpoint"] == str(ckpt)
