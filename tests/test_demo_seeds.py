"""Error bars in the demo's report and `demo --seeds N` (aggregation checked by hand; no simulator, no training)."""

from __future__ import annotations

import json

import pytest

from latentvla.config import parse_config
from latentvla.demo.configuration_demo import DemoConfig
from latentvla.demo.report import (
    _eval_fields,
    aggregate_seeds,
    format_seeds_table,
    format_table,
    write_report,
    write_seeds_report,
)
from latentvla.errors import LatentVLAError


def _summary(k: int, n: int, per_task: dict[str, tuple[int, int]]) -> dict:
    return {"success_rate": k / n, "episodes": n, "successes": k, "seconds": 1.0,
            "per_task": {t: {"success_rate": a / b, "episodes": b, "successes": a} for t, (a, b) in per_task.items()}}


def test_single_seed_table_shows_wilson_intervals(tmp_path, capsys):
    stages = {
        "evaluate:reference": {"random": _summary(0, 20, {"reach": (0, 10), "push": (0, 10)}),
                               "expert": _summary(20, 20, {"reach": (10, 10), "push": (10, 10)})},
        "train:baseline": {"train_seconds": 3.0, "final_metrics": {"l1": 0.1}},
        "evaluate:baseline": {"summary": _summary(12, 20, {"reach": (6, 10), "push": (6, 10)})},
    }
    config = {"sizes": {"tasks": ["reach", "push"], "eval_episodes_per_task": 10}, "config": {"scale": "tiny"}}
    write_report(tmp_path, ["baseline"], stages, config)
    text = capsys.readouterr().out
    # 12/20: Wilson [.386582, .781193]; 6/10: [.312674, .831820]; 0/10: [0, .277533]
    assert "| baseline | 60% [39, 78] | 60% [31, 83] | 60% [31, 83] | 0.100 |" in text
    assert "| random | 0% [0, 16] | 0% [0, 28] |" in text
    rows = {r["name"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["baseline"]["ci95"] == pytest.approx([0.386582, 0.781193], abs=1e-6)
    assert rows["baseline"]["per_task_ci95"]["reach"] == pytest.approx([0.312674, 0.831820], abs=1e-6)
    # a summary written before intervals existed (no "successes"): derived from rate x episodes
    old = {"success_rate": 0.5, "episodes": 4, "per_task": {"reach": {"success_rate": 0.5, "episodes": 4}}}
    table = format_table([{"name": "old", "kind": "variant", **_eval_fields(old)}], ["reach"])
    assert "50% [15, 85]" in table


def _seed_results(rates: dict[str, tuple[int, int]], tasks=("reach",)) -> dict:
    rows = []
    for name, (k, n) in rates.items():
        rows.append({"name": name, "kind": "reference" if name in ("random", "expert") else "variant",
                     "success_rate": k / n, "episodes": n, "successes": k,
                     "per_task": {t: k / n for t in tasks}, "final_l1": 0.1 if name == "baseline" else None})
    return {"rows": rows, "tasks": list(tasks)}


def test_aggregate_seeds_mean_and_t_interval_by_hand():
    per_seed = {7: _seed_results({"expert": (10, 10), "baseline": (5, 10)}),
                8: _seed_results({"expert": (10, 10), "baseline": (6, 10)}),
                9: _seed_results({"expert": (10, 10), "baseline": (7, 10)})}
    agg = aggregate_seeds(per_seed)
    assert agg["seeds"] == [7, 8, 9]
    rows = {r["name"]: r for r in agg["rows"]}
    b = rows["baseline"]
    # mean .6, sd .1, t(.975, 2) = 4.302653: half-width .248414
    assert b["success_rate"] == pytest.approx(0.6) and b["sd"] == pytest.approx(0.1)
    assert b["ci95"] == pytest.approx([0.351586, 0.848414], abs=1e-6)
    assert b["per_seed"] == {"7": 0.5, "8": 0.6, "9": 0.7}
    # pooled: 18/30: center (.6 + .064024) / 1.128049 = .588649, half .165445 -> Wilson [.423204, .754094]
    assert (b["pooled_successes"], b["pooled_episodes"]) == (18, 30)
    assert b["pooled_ci95"] == pytest.approx([0.423204, 0.754094], abs=2e-6)
    assert b["per_task"]["reach"] == pytest.approx(0.6) and b["final_l1"] == pytest.approx(0.1)
    e = rows["expert"]
    assert e["success_rate"] == 1.0 and e["ci95"] == [1.0, 1.0]  # no spread across seeds (sd 0)
    table = format_seeds_table(agg)
    assert "| baseline | 60% [35, 85] | 50, 60, 70 | 18/30 60% [42, 75] | 60% [35, 85] | 0.100 |" in table
    assert "t(0.975, 2)" in table
    one = aggregate_seeds({7: per_seed[7]})
    assert one["rows"][1]["ci95"] is None and "One seed" in format_seeds_table(one)


def test_write_seeds_report_is_stable(tmp_path, capsys):
    per_seed = {7: _seed_results({"baseline": (5, 10)}), 8: _seed_results({"baseline": (7, 10)})}
    out = write_seeds_report(tmp_path, per_seed, {"scale": "tiny"})
    assert (tmp_path / "success_rates.png").read_bytes()[:4] == b"\x89PNG" and out["seeds"] == [7, 8]
    assert "mean success" in (tmp_path / "results.md").read_text()
    before = (tmp_path / "results.json").stat().st_mtime_ns
    write_seeds_report(tmp_path, per_seed, {"scale": "tiny"})
    assert (tmp_path / "results.json").stat().st_mtime_ns == before  # nothing changed: nothing rewritten


def test_demo_seeds_runs_one_demo_per_seed_and_aggregates(tmp_path, monkeypatch, capsys):
    from latentvla.demo import pipeline

    seen = []

    def fake_run(self):  # one seed's whole pipeline, as far as the aggregation can tell
        seen.append((self.cfg.seed, self.cfg.seeds, self.paths.root.name))
        self.paths.root.mkdir(parents=True, exist_ok=True)
        k = {7: 4, 8: 6}[self.cfg.seed]
        (self.paths.root / "results.json").write_text(json.dumps(_seed_results({"baseline": (k, 10)})))
        return {}

    monkeypatch.setattr(pipeline.Demo, "run", fake_run)
    monkeypatch.setattr("latentvla.eval.metaworld_env.configure_rendering", lambda *a, **k: None)
    out = tmp_path / "demo"
    cfg = parse_config(DemoConfig, ["--output_dir", str(out), "--scale", "tiny", "--seeds", "2", "--variants",
                                    "baseline"])
    assert pipeline.run_demo(cfg) == 0
    assert seen == [(7, 1, "seed_7"), (8, 1, "seed_8")]
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [7, 8] and res["rows"][0]["success_rate"] == pytest.approx(0.5)
    # mean .5, sd .141421, t(.975, 1) = 12.706205 -> half 1.270620: clipped to [0, 1]
    assert res["rows"][0]["ci95"] == [0.0, 1.0]
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [7, 8]
    # the layouts do not mix
    with pytest.raises(LatentVLAError, match="holds a `--seeds N` demo"):
        pipeline.run_demo(parse_config(DemoConfig, ["--output_dir", str(out), "--scale", "tiny"]))
    single = tmp_path / "single"
    single.mkdir()
    (single / "demo_config.json").write_text("{}")
    with pytest.raises(LatentVLAError, match="holds a single-seed demo run"):
        pipeline.run_demo(parse_config(DemoConfig, ["--output_dir", str(single), "--seeds", "3"]))
    with pytest.raises(LatentVLAError, match="--seeds must be >= 1"):
        parse_config(DemoConfig, ["--seeds", "0"])
