"""Error bars and paired tests (`latentvla.eval.stats`), `eval compare`, the robustness table and the
suite list - all simulator independent (fake episode logs), checked against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from latentvla.errors import LatentVLAError
from latentvla.eval.results import format_table, summarize
from latentvla.eval.stats import (
    format_rate,
    mcnemar_exact,
    newcombe_interval,
    t_interval,
    t_quantile_975,
    wilson_interval,
)

# ----------------------------------------------------------------------------- Wilson

def _wilson_by_hand(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return center - half, center + half


def test_wilson_interval_hand_computed_cases():
    # 7/10: p = .7, z² = 3.841459; center = (.7 + .192073) / 1.384146 = .644493;
    # half = 1.959964 * sqrt(.021 + .009604) / 1.384146 = .247715  ->  [.396778, .892208]
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.396778, abs=1e-6) and hi == pytest.approx(0.892208, abs=1e-6)
    # 0/10: center = half = .192073 / 1.384146 = .138766  ->  [0, .277533] (not the Wald interval's [0, 0])
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-6)
    lo, hi = wilson_interval(10, 10)  # symmetric to 0/10
    assert lo == pytest.approx(1 - 0.277533, abs=1e-6) and hi == pytest.approx(1.0)
    # 36/50 (a typical 50-trial task): [.583349, .825258]
    lo, hi = wilson_interval(36, 50)
    assert lo == pytest.approx(0.583349, abs=1e-6) and hi == pytest.approx(0.825258, abs=1e-6)
    # 1/1: center (1 + 1.920730) / 4.841459 = .603275, half .396725 -> [.206549, 1]
    lo, hi = wilson_interval(1, 1)
    assert lo == pytest.approx(0.206549, abs=1e-6) and hi == pytest.approx(1.0)
    for k, n in ((3, 7), (49, 50), (250, 500)):
        assert wilson_interval(k, n) == pytest.approx(_wilson_by_hand(k, n))
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_newcombe_difference_interval():
    # p1 = 36/50 = .72, Wilson [.583349, .825258]; p2 = 20/50 = .40: center = .438415 / 1.076829 = .407135,
    # half = 1.959964 * sqrt(.0048 + .000384) / 1.076829 = .131051 -> [.276084, .538186]
    # lo = -.32 - sqrt((.40 - .276084)² + (.825258 - .72)²) = -.32 - .162587 = -.482587
    # hi = -.32 + sqrt((.538186 - .40)² + (.72 - .583349)²) = -.32 + .194342 = -.125658
    assert wilson_interval(20, 50) == pytest.approx((0.276084, 0.538186), abs=1e-6)
    lo, hi = newcombe_interval(36, 50, 20, 50)
    assert lo == pytest.approx(-0.482587, abs=2e-6) and hi == pytest.approx(-0.125658, abs=2e-6)
    assert lo < -0.32 < hi < 0  # a real drop: the interval excludes 0
    lo, hi = newcombe_interval(5, 10, 6, 10)
    assert lo < 0 < hi  # one episode out of ten: no evidence either way
    assert newcombe_interval(0, 0, 1, 2) is None


# ----------------------------------------------------------------------------- McNemar

def test_mcnemar_exact_hand_computed_cases():
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence
    # b=3, c=5: n=8, 2 * (C(8,0)+C(8,1)+C(8,2)+C(8,3)) / 2^8 = 2 * (1+8+28+56) / 256 = 186/256
    assert mcnemar_exact(3, 5) == 186 / 256 == 0.7265625
    assert mcnemar_exact(5, 3) == mcnemar_exact(3, 5)
    assert mcnemar_exact(0, 6) == 2 / 64  # 0.03125: six wins out of six
    assert mcnemar_exact(0, 5) == 2 / 32  # 0.0625: five out of five is not enough at 0.05
    assert mcnemar_exact(1, 9) == 2 * (1 + 10) / 1024
    assert mcnemar_exact(4, 4) == 1.0  # 2 * (1+8+28+56+70)/256 = 326/256, capped at 1
    assert mcnemar_exact(0, 1) == 1.0
    assert mcnemar_exact(200, 260) < 0.01 and mcnemar_exact(0, 2000) < 1e-300  # big n: exact integers, no overflow
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# ----------------------------------------------------------------------------- t-interval

def test_t_quantile_and_interval():
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile_975(9) == pytest.approx(2.2622, abs=1e-4)
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=1e-4)
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=1e-4)
    # rates .5, .6, .7: mean .6, sd .1, half = 4.302653 * .1 / sqrt(3) = .248414
    ti = t_interval([0.5, 0.6, 0.7])
    assert ti["mean"] == pytest.approx(0.6) and ti["sd"] == pytest.approx(0.1)
    assert ti["half_width"] == pytest.approx(0.248414, abs=1e-6)
    assert ti["ci95"] == pytest.approx([0.351586, 0.848414], abs=1e-6)
    assert t_interval([0.9, 1.0])["ci95"][1] == 1.0  # clipped to a rate
    assert t_interval([0.4])["ci95"] is None and t_interval([])["mean"] is None
    assert format_rate(0.72, [0.583349, 0.825258]) == "72.0% [58.3, 82.5]"


# ----------------------------------------------------------------------------- summaries

def _rec(task_id: int, trial: int, success: bool, suite: str = "libero_goal", task: str | None = None, **kw) -> dict:
    return {"suite": suite, "task_id": task_id, "task": task or f"task{task_id}", "instruction": f"task{task_id}",
            "trial": trial, "success": success, "steps": 5, "seconds": 0.5, **kw}


def test_summary_and_table_carry_wilson_intervals():
    recs = [_rec(0, i, i < 7) for i in range(10)] + [_rec(1, i, False) for i in range(10)]
    s = summarize(recs)
    assert s["tasks"][0]["ci95"] == pytest.approx([0.396778, 0.892208], abs=2e-6)
    assert s["tasks"][1]["ci95"] == pytest.approx([0.0, 0.277533], abs=1e-6)
    assert s["ci95"] == pytest.approx(list(wilson_interval(7, 20)), abs=1e-6)
    assert s["suites"][0]["ci95"] == s["ci95"]
    table = format_table(s)
    assert "95% CI (Wilson)" in table and "70.0%" in table and "[39.7, 89.2]" in table and "[0.0, 27.8]" in table
    old = {**s, "tasks": [{k: v for k, v in t.items() if k != "ci95"} for t in s["tasks"]]}  # a pre-interval summary
    assert "[39.7, 89.2]" in format_table(old)


# ----------------------------------------------------------------------------- eval compare

def _write_eval(d: Path, outcomes: dict[int, list[bool]], suite: str = "libero_goal", **run) -> Path:
    d.mkdir(parents=True)
    with open(d / "episodes.jsonl", "w") as f:
        for t, outs in outcomes.items():
            for i, ok in enumerate(outs):
                f.write(json.dumps(_rec(t, i, ok, suite=suite)) + "\n")
    (d / "run.json").write_text(json.dumps({"suite": suite, "seed": 7, **run}))
    return d


def test_compare_counts_discordant_pairs_and_says_when_not_significant(tmp_path, capsys):
    from latentvla.cli import main

    # task 0: A 6/10, B 9/10 with b=0, c=3 -> p = 2/8 = .25; task 1: A 2/10, B 10/10, b=0, c=8 -> p = 2/256
    a = _write_eval(tmp_path / "a", {0: [True] * 6 + [False] * 4, 1: [True] * 2 + [False] * 8}, checkpoint="ck_a")
    b = _write_eval(tmp_path / "b", {0: [True] * 9 + [False], 1: [True] * 10}, checkpoint="ck_b")
    out_json = tmp_path / "cmp.json"
    assert main(["eval", "compare", str(a), str(b), "--output_json", str(out_json)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    t0, t1 = res["tasks"]
    assert (t0["a_only"], t0["b_only"], t0["p_value"], t0["significant"]) == (0, 3, 0.25, False)
    assert (t1["a_only"], t1["b_only"], t1["p_value"], t1["significant"]) == (0, 8, 2 / 256, True)
    assert t0["difference"] == pytest.approx(0.3) and t0["a_ci95"] == pytest.approx([0.312674, 0.831820], abs=1e-6)
    o = res["overall"]
    assert (o["episodes"], o["a_only"], o["b_only"]) == (20, 0, 11) and o["p_value"] == 2 / 2 ** 11
    assert res["settings_that_differ"] == {"checkpoint": ["ck_a", "ck_b"]}
    assert "significant at alpha = 0.05: B is better by 55.0 points" in text

    # one episode's difference: plainly not significant
    c = _write_eval(tmp_path / "c", {0: [True] * 5 + [False] * 5})
    d = _write_eval(tmp_path / "d", {0: [True] * 6 + [False] * 4})
    assert main(["eval", "compare", str(c), str(d)]) == 0
    text = capsys.readouterr().out
    assert "NOT significant at alpha = 0.05 (p = 1;" in text and "could be episode-to-episode noise" in text


def test_compare_refuses_other_suites_or_initial_states(tmp_path, capsys):
    from latentvla.cli import main

    a = _write_eval(tmp_path / "a", {0: [True, False]})
    cases = {
        "needs the same suite": _write_eval(tmp_path / "b", {0: [True, False]}, suite="libero_spatial"),
        "ran different episodes": _write_eval(tmp_path / "c", {0: [True, False, True]}),
    }
    for message, other in cases.items():
        assert main(["eval", "compare", str(a), str(other)]) == 2, message
        assert message in capsys.readouterr().err
    # the shared episodes only, when asked
    assert main(["eval", "compare", str(a), str(tmp_path / "c"), "--common_only", "True"]) == 0
    assert "TOTAL" in capsys.readouterr().out
    # the same task id naming another task (another benchmark build)
    e = tmp_path / "e"
    e.mkdir()
    (e / "episodes.jsonl").write_text("".join(json.dumps(_rec(0, i, True, task="other")) + "\n" for i in range(2)))
    assert main(["eval", "compare", str(a), str(e)]) == 2
    assert "not the same initial states" in capsys.readouterr().err


def test_compare_demo_eval_dirs_checks_seeds(tmp_path, capsys):
    from latentvla.cli import main

    def demo_dir(name, outcomes, seed_base=500_000):
        d = tmp_path / name
        d.mkdir()
        d.joinpath("episodes.jsonl").write_text("".join(
            json.dumps({"task": "reach", "episode": i, "seed": seed_base + i, "success": ok, "steps": 3,
                        "seconds": 0.1})
            + "\n" for i, ok in enumerate(outcomes)))
        return d

    a = demo_dir("baseline", [True, False, False, True])
    b = demo_dir("la_align", [True, True, False, True])
    assert main(["eval", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "reach" in out and "NOT significant" in out
    c = demo_dir("other_seed", [True, True, False, True], seed_base=900_000)
    assert main(["eval", "compare", str(a), str(c)]) == 2
    assert "not the same initial states" in capsys.readouterr().err


# ----------------------------------------------------------------------------- robustness table, suites

def test_robustness_rows_and_table():
    from latentvla.eval.robustness import format_robustness_table, robustness_rows

    def summary(k, n, suite):
        return {"successes": k, "episodes": n, "complete": True, "tasks": [{}] * 10, "output_dir": f"/x/{suite}"}

    entries = [{"perturbation": "original", "suite": "libero_goal", "trials": 5},
               {"perturbation": "lan", "suite": "libero_goal_lan", "trials": 5},
               {"perturbation": "with_milk", "suite": "libero_goal_with_milk", "trials": 2,
                "note": "10 initial states per task: 2 trials instead of 5"}]
    res = robustness_rows(entries, {"libero_goal": summary(36, 50, "g"), "libero_goal_lan": summary(20, 50, "l"),
                                    "libero_goal_with_milk": summary(19, 20, "m")})
    orig, lan, milk = res["rows"]
    assert orig["change"] is None and orig["ci95"] == pytest.approx([0.583349, 0.825258], abs=1e-6)
    assert lan["change"] == pytest.approx(-0.32) and lan["change_ci95"] == pytest.approx(
        list(newcombe_interval(36, 50, 20, 50)), abs=1e-6)
    assert res["pooled"]["episodes"] == 70 and res["pooled"]["successes"] == 39
    table = format_robustness_table(res)
    assert "72.0% [58.3, 82.5]" in table and "-32.0 pts [-48.3, -12.6]" in table
    assert "2 trials instead of 5" in table and "all perturbations (pooled)" in table


def test_suite_names_and_instruction_source():
    from latentvla.eval.suites import (
        AVAILABLE_SUITES,
        check_suite,
        perturbation_suites,
        resolve_instruction_source,
        split_suite,
        suite_max_steps,
    )

    assert split_suite("libero_10_with_mug") == ("libero_10", "with_mug")
    assert split_suite("libero_goal") == ("libero_goal", None)
    assert suite_max_steps("libero_10_lan") == 520 and suite_max_steps("libero_goal_with_milk") == 300
    assert resolve_instruction_source("libero_goal_lan") == "bddl" == resolve_instruction_source("libero_spatial_task")
    assert resolve_instruction_source("libero_goal_swap") == "task_name" == resolve_instruction_source("libero_goal")
    assert resolve_instruction_source("libero_goal", "bddl") == "bddl"
    assert len(AVAILABLE_SUITES) == 5 + 25
    for bad in ("libero_goal_env", "libero_10_with_milk", "libero_object_with_red_stick", "libero_100"):
        with pytest.raises(LatentVLAError, match="unknown or unavailable suite.*libero_goal_lan"):
            check_suite(bad)
    suites = [s for _, s in perturbation_suites("libero_goal", ["lan", "_swap"])]
    assert suites == ["libero_goal_lan", "libero_goal_swap"]
    with pytest.raises(LatentVLAError, match="not available for libero_object; available: lan"):
        perturbation_suites("libero_object", ["with_milk"])
    with pytest.raises(LatentVLAError, match="no runnable perturbation"):
        perturbation_suites("libero_90")


def test_eval_cli_refuses_unavailable_suites_without_leaving_a_log(tmp_path, capsys):
    from latentvla.cli import main

    logs = tmp_path / "logs"
    base = ["--policy", "zero", "--output_dir", str(tmp_path / "o"), "--log_dir", str(logs)]
    assert main(["eval", "libero", "--task_suite_name", "libero_goal_env", *base]) == 2
    err = capsys.readouterr().err
    assert "libero_goal_env" in err and "libero_goal_with_mug" in err and "libero-pro audit" in err
    assert main(["eval", "robustness", "--suite", "libero_goal", "--perturbations", "env", *base]) == 2
    assert "available: lan, object, swap, task" in capsys.readouterr().err
    # a run that fails before it starts leaves no (empty) log file behind
    assert main(["eval", "libero", "--pretrained_checkpoint", str(tmp_path / "missing"), "--output_dir",
                 str(tmp_path / "o"), "--log_dir", str(logs)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert not logs.exists() and not (tmp_path / "o").exists()


def test_compare_two_robustness_dirs_pairs_each_suite(tmp_path, capsys):
    from latentvla.cli import main

    def rob(name, orig, lan):
        root = tmp_path / name
        _write_eval(root / "libero_goal", {0: orig})
        _write_eval(root / "libero_goal_lan", {0: lan}, suite="libero_goal_lan")
        (root / "robustness.json").write_text(json.dumps({"run": {"suites": ["libero_goal", "libero_goal_lan"]}}))
        return root

    a = rob("a", [True, True, False], [False, False, False])
    b = rob("b", [True, True, True], [True, True, False])
    out = tmp_path / "cmp.json"
    assert main(["eval", "compare", str(a), str(b), "--output_json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(s["suite"], s["a_only"], s["b_only"]) for s in res["suites"]] == [("libero_goal", 0, 1),
                                                                               ("libero_goal_lan", 0, 2)]
    assert res["overall"]["episodes"] == 6 and res["overall"]["p_value"] == 2 / 8
    assert "libero_goal_lan: NOT significant" in capsys.readouterr().out
    assert main(["eval", "compare", str(a), str(a / "libero_goal")]) == 2  # robustness dir vs a single run
    assert "is an `eval robustness` dir" in capsys.readouterr().err
