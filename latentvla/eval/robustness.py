"""`latentvla eval robustness`: a standard LIBERO suite and each of its LIBERO-PRO perturbations.

Flow: check `--suite` / `--perturbations` -> pin the checkpoint (a run dir or `latest` pointer
resolves once, so every suite is evaluated with the same weights even while training goes on) ->
pre-flight every suite before any episode (registered, resources present, enough fixed initial
states; a suite with fewer states than `--num_trials_per_task` runs all it has) -> one
`eval libero` run per suite into `<output_dir>/<suite>/` (each resumable on its own; an
in-process policy is loaded once and shared) -> `robustness.json`, `robustness.png` and the table:
success per suite with its Wilson 95% interval, and the change from the original in points with
a 95% interval for a difference of independent proportions (Newcombe; the suites have other
scenes, so their episodes are not paired).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latentvla.eval.configuration_eval import LiberoEvalConfig, RobustnessEvalConfig
from latentvla.eval.results import pyplot, save_bar_chart
from latentvla.eval.stats import ci_list, format_rate, newcombe_interval
from latentvla.eval.suites import PERTURBATIONS, perturbation_suites
from latentvla.utils.atomic import atomic_write_json

log = logging.getLogger("latentvla.eval.robustness")


def sub_config(cfg: RobustnessEvalConfig, suite: str, output_dir: Path, trials: int) -> LiberoEvalConfig:
    """The `eval libero` config of one suite: every option of `cfg`, this suite, its own output dir."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LiberoEvalConfig) if f.init}
    values.update(task_suite_name=suite, output_dir=str(output_dir), num_trials_per_task=trials)
    sub = LiberoEvalConfig(**values)
    sub.validate()
    return sub


def plan(cfg: RobustnessEvalConfig, libero: Any) -> list[dict]:
    """[{perturbation, suite, trials, note}] for the original and each perturbation, checked up front."""
    from latentvla.eval.libero_env import LiberoSuite, load_init_states
    from latentvla.eval.libero_eval import select_task_ids

    entries = [("original", cfg.suite)] + perturbation_suites(cfg.suite, cfg.perturbations)
    out = []
    for perturbation, name in entries:
        suite = LiberoSuite(name, libero, instruction_source=cfg.instruction_source)
        task_ids = select_task_ids(dataclasses.replace(_as_libero(cfg), task_suite_name=name), suite.num_tasks)
        suite.check_resources(task_ids)
        available = min(len(load_init_states(suite.tasks[t].init_states_file)) for t in task_ids)
        trials = min(cfg.num_trials_per_task, available)
        note = (f"{available} initial states per task: {trials} trials instead of {cfg.num_trials_per_task}"
                if trials < cfg.num_trials_per_task else "")
        out.append({"perturbation": perturbation, "suite": name, "trials": trials, "note": note,
                    "instruction_source": suite.instruction_source})
    return out


def _as_libero(cfg: RobustnessEvalConfig) -> LiberoEvalConfig:
    return LiberoEvalConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LiberoEvalConfig) if f.init})


def robustness_rows(entries: Sequence[Mapping[str, Any]], summaries: Mapping[str, Mapping[str, Any]]) -> dict:
    """Rows of the table (original first) + the pooled perturbed row, from the sub-runs' summaries."""
    rows = []
    orig = None
    for e in entries:
        s = summaries.get(e["suite"])
        if s is None:
            continue
        k, n = int(s["successes"]), int(s["episodes"])
        row = {"perturbation": e["perturbation"], "suite": e["suite"],
               "what": "the original suite" if e["perturbation"] == "original" else PERTURBATIONS[e["perturbation"]],
               "tasks": len(s.get("tasks", [])), "trials_per_task": e.get("trials"), "episodes": n, "successes": k,
               "success_rate": k / n if n else None, "ci95": ci_list(k, n), "change": None, "change_ci95": None,
               "complete": bool(s.get("complete", True)), "instruction_source": e.get("instruction_source"),
               "note": e.get("note", ""), "output_dir": s.get("output_dir")}
        if e["perturbation"] == "original":
            orig = row
        elif orig is not None and n and orig["episodes"]:
            row["change"] = row["success_rate"] - orig["success_rate"]
            ci = newcombe_interval(orig["successes"], orig["episodes"], k, n)
            row["change_ci95"] = None if ci is None else [round(ci[0], 6), round(ci[1], 6)]
        rows.append(row)
    perturbed = [r for r in rows if r["perturbation"] != "original"]
    pooled = None
    if perturbed:
        k, n = sum(r["successes"] for r in perturbed), sum(r["episodes"] for r in perturbed)
        pooled = {"perturbation": "all perturbations (pooled)", "suite": "", "episodes": n, "successes": k,
                  "success_rate": k / n if n else None, "ci95": ci_list(k, n), "change": None, "change_ci95": None}
        if orig is not None and n and orig["episodes"]:
            pooled["change"] = pooled["success_rate"] - orig["success_rate"]
            ci = newcombe_interval(orig["successes"], orig["episodes"], k, n)
            pooled["change_ci95"] = None if ci is None else [round(ci[0], 6), round(ci[1], 6)]
    return {"rows": rows, "pooled": pooled}


def _change(row: Mapping[str, Any]) -> str:
    if row.get("change") is None:
        return "-"
    text = f"{100 * row['change']:+.1f} pts"
    ci = row.get("change_ci95")
    if ci is not None:
        text += f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
    return text


def format_robustness_table(result: Mapping[str, Any]) -> str:
    head = ("perturbation", "suite", "episodes", "success [95% CI]", "change from original [95% CI]")
    rows = [head]
    for r in result["rows"]:
        rows.append((r["perturbation"], r["suite"], str(r["episodes"]) + ("" if r["complete"] else "*"),
                     format_rate(r["success_rate"], r["ci95"]), _change(r)))
    sep = len(rows)
    if result.get("pooled"):
        p = result["pooled"]
        rows.append((p["perturbation"], "", str(p["episodes"]), format_rate(p["success_rate"], p["ci95"]), _change(p)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

    def fmt(r):
        return "  ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths, strict=False)))

    rule = "-" * len(fmt(head))
    lines = [fmt(head), rule, *map(fmt, rows[1:sep])]
    if len(rows) > sep:
        lines += [rule, *map(fmt, rows[sep:])]
    notes = [f"{r['suite']}: {r['note']}" for r in result["rows"] if r.get("note")]
    if any(not r["complete"] for r in result["rows"]):
        notes.append("* incomplete: rerun the same command to finish it")
    notes.append("success: Wilson 95% interval; change from original: percentage points, 95% interval of "
                 "a difference of independent proportions (Newcombe); an interval that contains 0 is no "
                 "evidence of a change")
    return "\n".join(lines + [""] + notes)


def robustness_plot(path: Path, result: Mapping[str, Any], title: str) -> Path | None:
    """Bars: success per suite with Wilson 95% error bars; the original's rate as a dashed line."""
    plt = pyplot(log.warning, "robustness plot (pip install matplotlib)")
    if plt is None:
        return None
    rows = [r for r in result["rows"] if r["success_rate"] is not None]
    if not rows:
        return None
    names = [r["perturbation"] for r in rows]
    vals = [100 * r["success_rate"] for r in rows]
    lo = [100 * (r["success_rate"] - r["ci95"][0]) for r in rows]
    hi = [100 * (r["ci95"][1] - r["success_rate"]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(rows) + 2), 4))
    colors = ["tab:gray" if r["perturbation"] == "original" else "tab:blue" for r in rows]
    bars = ax.bar(range(len(rows)), vals, yerr=[lo, hi], capsize=4, color=colors)
    ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=8, padding=2)
    if rows[0]["perturbation"] == "original":
        ax.axhline(vals[0], color="tab:gray", linestyle="--", linewidth=1)
    return save_bar_chart(plt, fig, ax, path, names, "success rate (%), 95% Wilson interval", title, fontsize=10)


def run_robustness(cfg: RobustnessEvalConfig) -> int:
    from latentvla.eval.libero_env import configure_rendering, import_libero
    from latentvla.eval.libero_eval import SharedPolicy, _run_name, evaluate_libero, resolve_policy_flags

    cfg.validate()
    hub = resolve_policy_flags(cfg)  # pinned once: every suite runs the same checkpoint step
    backend = configure_rendering(cfg.render_backend)
    out_root = Path(cfg.output_dir or Path("eval_results") / "robustness" / _run_name(cfg))
    entries = plan(cfg, import_libero(backend))
    for e in entries:
        if e["note"]:
            print(f"[eval robustness] {e['suite']}: {e['note']}", flush=True)
    out_root.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    meta = {"suite": cfg.suite, "checkpoint": cfg.pretrained_checkpoint or None, "policy": cfg.policy,
            "policy_server": cfg.policy_server, "seed": cfg.seed, "hub": hub,
            "suites": [e["suite"] for e in entries]}
    shared = SharedPolicy()
    result: dict = {}
    try:
        for i, e in enumerate(entries, 1):
            print(f"[eval robustness] [{i}/{len(entries)}] {e['suite']} ({e['perturbation']})", flush=True)
            sub = sub_config(cfg, e["suite"], out_root / e["suite"], e["trials"])
            s = evaluate_libero(sub, shared=shared, hub=hub)
            summaries[e["suite"]] = s
            print(f"[eval robustness] {e['suite']}: {format_rate(s['success_rate'], s.get('ci95'))} "
                  f"over {s['episodes']} episodes", flush=True)
            result = _write(out_root, entries, summaries, meta)
    finally:
        shared.close()
    print(format_robustness_table(result))
    print(f"[eval robustness] {out_root / 'robustness.json'}; plot: {result.get('plot') or 'none'}")
    return 0


def _write(out_root: Path, entries: Sequence[Mapping[str, Any]], summaries: Mapping[str, Mapping], meta: dict) -> dict:
    result = {"run": meta, **robustness_rows(entries, summaries)}
    result["complete"] = len(summaries) == len(entries) and all(r["complete"] for r in result["rows"])
    title = f"{meta['suite']} under LIBERO-PRO perturbations ({meta.get('checkpoint') or meta.get('policy')})"
    if len(title) > 90:
        title = title[:87] + "..."
    plot = robustness_plot(out_root / "robustness.png", result, title)
    result["plot"] = str(plot) if plot else None
    atomic_write_json(out_root / "robustness.json", result)
    return result

