"""`latentvla demo` options, stage bookkeeping and the report (no simulator, no training)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from latentvla.config import parse_config
from latentvla.demo.configuration_demo import SCALES, DemoConfig
from latentvla.demo.pipeline import Demo, call_command, last_metrics, latest_checkpoint
from latentvla.demo.report import write_report
from latentvla.errors import LatentVLAError


def test_scales_resolve_and_explicit_flags_win():
    for name in SCALES:
        sizes = parse_config(DemoConfig, ["--scale", name]).resolved()
        assert sizes.image_size % 32 == 0 and sizes.tasks
    cfg = parse_config(DemoConfig, ["--scale", "tiny", "--demos_per_task", "3", "--tasks", "push,reach", "--image_size",
                                    "96"])
    s = cfg.resolved()
    assert (s.demos_per_task, s.tasks, s.image_size) == (3, ("push", "reach"), 96)
    assert s.train_steps == SCALES["tiny"].train_steps


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", "fly"], "--tasks"),
    (["--image_size", "50"], "--image_size"),
    (["--variants", "baseline,la_magic"], "--variants"),
    (["--restart_from", "nowhere"], "--restart_from"),
    (["--train_steps", "0"], "--train_steps"),
    (["--action_noise", "-1"], "--action_noise"),
])
def test_bad_options_are_clear_errors(argv, needle):
    with pytest.raises(LatentVLAError, match=needle):
        parse_config(DemoConfig, argv)


def test_help_is_fast():
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "latentvla.cli", "demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--scale" in out.stdout
    assert time.perf_counter() - t0 < 3.0


def test_missing_command_names_the_stage():
    with pytest.raises(LatentVLAError, match=r"stage 'train:baseline' needs `latentvla no-such-cmd`"):
        call_command("no-such-cmd", [], stage="train:baseline")


def test_rejected_flags_are_reported():
    with pytest.raises(LatentVLAError, match="rejected the demo's options"):
        call_command("robots", ["--no_such_flag", "1"], stage="models")


def test_stage_list_follows_variants(tmp_path):
    d = Demo(parse_config(DemoConfig, ["--output_dir", str(tmp_path), "--variants", "baseline"]))
    assert d.stage_names() == ["data", "models", "train:baseline", "evaluate:reference", "evaluate:baseline", "report"]
    d = Demo(parse_config(DemoConfig, ["--output_dir", str(tmp_path)]))
    names = d.stage_names()
    assert {"action_tokenizer", "image_lam", "annotate", "train:la_tok", "evaluate:la_cond"} <= set(names)
    assert (names.index("annotate") < names.index("train:baseline") < names.index("evaluate:reference")
            < names.index("report"))


def test_changed_settings_need_restart_and_restart_clears_later_stages(tmp_path):
    base = ["--output_dir", str(tmp_path), "--scale", "tiny"]
    d = Demo(parse_config(DemoConfig, base))
    d.prepare()
    for stage in ("data", "train:baseline", "evaluate:baseline", "report"):
        d.marker(stage).parent.mkdir(parents=True, exist_ok=True)
        d.marker(stage).write_text(json.dumps({"stage": stage, "seconds": 1}))
    (d.paths.runs / "baseline").mkdir(parents=True)
    with pytest.raises(LatentVLAError, match="train_steps: 10 -> 99"):
        Demo(parse_config(DemoConfig, [*base, "--train_steps", "99"])).prepare()
    d2 = Demo(parse_config(DemoConfig, [*base, "--train_steps", "99", "--restart_from", "train"]))
    d2.prepare()
    assert d2.done("data") is not None
    assert d2.done("train:baseline") is None and d2.done("evaluate:baseline") is None and d2.done("report") is None
    assert not d2.paths.runs.exists()
    # the new settings are now the run's: no error without --restart_from
    Demo(parse_config(DemoConfig, [*base, "--train_steps", "99"])).prepare()


def test_checkpoint_and_metrics_helpers(tmp_path):
    ck = tmp_path / "run" / "checkpoints"
    (ck / "step_5").mkdir(parents=True)
    (ck / "step_12").mkdir()
    assert latest_checkpoint(tmp_path / "run", "x").name == "step_12"
    (ck / "latest").write_text("step_5\n")
    assert latest_checkpoint(tmp_path / "run", "x").name == "step_5"
    with pytest.raises(LatentVLAError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "none", "train:baseline")
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"step": 1, "l1": 0.5}\n{"step": 2, "l1": 0.25, "code_acc": 0.4}\n{"torn')
    assert last_metrics(m) == {"step": 2, "l1": 0.25, "code_acc": 0.4}


def test_report_writes_table_json_and_plot(tmp_path, capsys):
    per_task = lambda r: {"reach": {"success_rate": r}, "push": {"success_rate": r / 2}}  # noqa: E731
    stages = {
        "evaluate:reference": {"random": {"success_rate": 0.0, "per_task": per_task(0.0), "seconds": 3},
                               "expert": {"success_rate": 1.0, "per_task": per_task(1.0), "seconds": 4}},
        "train:baseline": {"train_seconds": 12.5, "final_metrics": {"step": 10, "train/l1": 0.12}, "checkpoint": "c"},
        "evaluate:baseline": {"summary": {"success_rate": 0.6, "per_task": per_task(0.8), "seconds": 30}},
        "train:la_tok": {"train_seconds": 14.0, "final_metrics": {"l1": 0.2, "code_acc": 0.3}},
        "evaluate:la_tok": None,
    }
    config = {"sizes": {"tasks": ["reach", "push"], "eval_episodes_per_task": 5}, "config": {"scale": "tiny"}}
    out = write_report(tmp_path, ["baseline", "la_tok"], stages, config)
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["baseline"]["success_rate"] == 0.6 and rows["baseline"]["final_l1"] == 0.12
    assert rows["la_tok"]["aux_metrics"] == {"code_acc": 0.3} and rows["la_tok"]["success_rate"] is None
    assert rows["random"]["per_task"]["push"] == 0.0
    text = capsys.readouterr().out
    assert "| baseline | 60% | 80% | 40% | 0.120 |" in text
    assert (tmp_path / "results.md").is_file()
    assert out["plot"] and (tmp_path / "success_rates.png").read_bytes()[:4] == b"\x89PNG"


def test_call_command_runs_a_registered_command(capsys):
    assert call_command("robots", ["--json"], stage="models") == 0
    assert '"metaworld"' in capsys.readouterr().out


def test_finished_stages_are_skipped(tmp_path, capsys):
    d = Demo(parse_config(DemoConfig, ["--output_dir", str(tmp_path), "--scale", "tiny", "--variants", "baseline"]))
    d.prepare()
    for stage in d.stage_names():
        d.marker(stage).parent.mkdir(parents=True, exist_ok=True)
        d.marker(stage).write_text(json.dumps({"stage": stage, "seconds": 2}))
    info = d.run()  # would need Meta-World, training, ... if any stage ran
    assert list(info) == d.stage_names()
    assert capsys.readouterr().out.count("skipping") == len(d.stage_names())


def test_report_is_redone_when_an_earlier_stage_ran(tmp_path, monkeypatch):
    d = Demo(parse_config(DemoConfig, ["--output_dir", str(tmp_path), "--scale", "tiny", "--variants", "baseline"]))
    d.prepare()
    for stage in d.stage_names():
        if stage != "evaluate:reference":
            d.marker(stage).parent.mkdir(parents=True, exist_ok=True)
            d.marker(stage).write_text(json.dumps({"stage": stage, "seconds": 2}))
    ref = {"success_rate": 0.0, "per_task": {"reach": {"success_rate": 0.0}}, "seconds": 1}
    monkeypatch.setattr(d, "stage_evaluate_reference", lambda: {"random": ref, "expert": {**ref, "success_rate": 1.0}})
    d.run()
    rows = {r["name"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["expert"]["success_rate"] == 1.0 and rows["baseline"]["success_rate"] is None
