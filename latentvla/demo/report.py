"""The demo's result: a printed table, `results.json`, `results.md` and a bar plot PNG.

Rows: every variant (closed-loop success rate overall and per task, final training L1 and the
auxiliary metrics it logged, training and evaluation time), plus the random policy and the
scripted expert as floor and ceiling on the same held-out seeds. Every success rate carries its
Wilson 95% interval (`latentvla.eval.stats`): with 10 episodes per task, 60% is [31, 83] - a
1-2 episode difference between variants is noise, and the table says so by showing it.

`demo --seeds N` (`write_seeds_report`): one full demo run per seed; each policy's row is the
mean success rate across seeds with a 95% Student-t interval over the per-seed rates (the
spread of whole training + evaluation runs, which episode counts alone do not show), the
per-seed rates, and the pooled Wilson interval of all episodes for reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latentvla.eval.results import pyplot, save_bar_chart
from latentvla.eval.stats import ci_list, t_interval
from latentvla.utils.atomic import atomic_write_json, atomic_write_text

# Metric names the trainer may log (first match wins); shown when present.
L1_KEYS = ("l1", "loss/l1", "train/l1", "l1_loss")
AUX_KEYS = ("code_acc", "cosine", "ce", "align_loss", "token_loss", "loss")


def _find(metrics: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, float] | None:
    for k in keys:
        for name, v in metrics.items():
            if (name == k or name.endswith("/" + k)) and isinstance(v, (int, float)):
                return name, float(v)
    return None


def _counts(summary: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(successes, episodes) of an evaluation summary; successes derived for summaries that predate it."""
    n = summary.get("episodes")
    rate = summary.get("success_rate")
    if not isinstance(n, int) or n <= 0 or rate is None:
        return None, None
    k = summary.get("successes")
    return (int(k) if isinstance(k, int) else int(round(rate * n))), n


def _eval_fields(summary: Mapping[str, Any]) -> dict:
    k, n = _counts(summary)
    per_task, per_task_ci, per_task_n = {}, {}, {}
    tasks = summary.get("per_task") or {t["task"]: t for t in summary.get("tasks") or ()}  # older or eval's
    for t, v in tasks.items():
        per_task[t] = v.get("success_rate")
        tk, tn = _counts(v)
        per_task_ci[t] = ci_list(tk, tn) if tn else None
        per_task_n[t] = [tk, tn] if tn else None
    return {"success_rate": summary.get("success_rate"), "episodes": n, "successes": k,
            "ci95": ci_list(k, n) if n else None, "per_task": per_task, "per_task_ci95": per_task_ci,
            "per_task_counts": per_task_n}


def collect_rows(variants: Sequence[str], stages: Mapping[str, Mapping | None]) -> list[dict]:
    rows = []
    for label in ("random", "expert"):
        ref = (stages.get("evaluate:reference") or {}).get(label)
        if ref:
            rows.append({"name": label, "kind": "reference", **_eval_fields(ref),
                         "eval_seconds": ref.get("seconds", ref.get("episode_seconds"))})
    for v in variants:
        train = stages.get(f"train:{v}") or {}
        ev = (stages.get(f"evaluate:{v}") or {}).get("summary") or {}
        metrics = train.get("final_metrics") or {}
        l1 = _find(metrics, L1_KEYS)
        aux = {}
        for k in AUX_KEYS:
            hit = _find(metrics, (k,))
            if hit and (l1 is None or hit[0] != l1[0]):
                aux[hit[0]] = hit[1]
        rows.append({"name": v, "kind": "variant", **_eval_fields(ev),
                     "final_l1": l1[1] if l1 else None, "aux_metrics": aux,
                     "train_seconds": train.get("train_seconds", train.get("seconds")),
                     "eval_seconds": ev.get("seconds", ev.get("episode_seconds")),
                     "checkpoint": train.get("checkpoint")})
    return rows


def _pct(x: float | None, ci: Sequence[float] | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.0f}%" + ("" if ci is None else f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]")


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_table(rows: Sequence[dict], tasks: Sequence[str]) -> str:
    head = ["policy", "success [95% CI]", *tasks, "final L1", "aux metrics", "train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        aux = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in (r.get("aux_metrics") or {}).items()) or "-"
        task_ci = r.get("per_task_ci95") or {}
        cells = [r["name"], _pct(r["success_rate"], r.get("ci95")),
                 *[_pct(r["per_task"].get(t), task_ci.get(t)) for t in tasks],
                 _num(r.get("final_l1")), aux, _num(r.get("train_seconds"), "{:.0f}"),
                 _num(r.get("eval_seconds"), "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("ci95") for r in rows):
        lines.append("\nSuccess: Wilson 95% interval over the evaluation episodes; variants whose intervals overlap "
                     "widely are not told apart by this many episodes (`latentvla eval compare` tests a pair exactly).")
    return "\n".join(lines)


def bar_plot(path: Path, rows: Sequence[dict], tasks: Sequence[str], title: str) -> Path | None:
    """Grouped bars: success per task for each policy (reference rows included)."""
    plt = pyplot(print, "plot (pip install -e '.[metaworld]')")
    if plt is None:
        return None
    import numpy as np

    names = [r["name"] for r in rows]
    groups = [*tasks, "overall"] if len(tasks) > 1 else ["overall"]
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4))
    x = np.arange(len(names))
    for gi, g in enumerate(groups):
        vals = [(r["success_rate"] if g == "overall" else r["per_task"].get(g)) for r in rows]
        cis = [(r.get("ci95") if g == "overall" else (r.get("per_task_ci95") or {}).get(g)) for r in rows]
        err = _yerr(vals, cis)
        bars = ax.bar(x + (gi - (len(groups) - 1) / 2) * width, [100 * (v or 0) for v in vals], width, label=g,
                      yerr=err, capsize=2 if err is not None else 0, error_kw={"elinewidth": 0.8})
        ax.bar_label(bars, labels=["-" if v is None else f"{100 * v:.0f}" for v in vals], fontsize=7)  # 0 stays visible
        if g == "overall" and any(r.get("per_seed") for r in rows):  # --seeds: each seed's rate as a dot
            xs, ys = [], []
            for xi, r in zip(x + (gi - (len(groups) - 1) / 2) * width, rows, strict=True):
                for v in (r.get("per_seed") or {}).values():
                    xs.append(xi)
                    ys.append(100 * v)
            ax.scatter(xs, ys, s=12, color="black", zorder=3, label="one seed")
    ax.legend(fontsize=8)
    return save_bar_chart(plt, fig, ax, path, names, "success rate (%), 95% interval", title)


def _yerr(vals: Sequence[float | None], cis: Sequence[Sequence[float] | None]):
    """Asymmetric error bars (percent) for matplotlib; None when no interval is known."""
    if not any(ci is not None and v is not None for v, ci in zip(vals, cis, strict=True)):
        return None
    lo = [100 * (v - ci[0]) if v is not None and ci is not None else 0.0 for v, ci in zip(vals, cis, strict=True)]
    hi = [100 * (ci[1] - v) if v is not None and ci is not None else 0.0 for v, ci in zip(vals, cis, strict=True)]
    return [[max(0.0, e) for e in lo], [max(0.0, e) for e in hi]]


def write_report(root: str | Path, variants: Sequence[str], stages: Mapping[str, Mapping | None],
                 config: Mapping[str, Any]) -> dict:
    root = Path(root)
    tasks = list(config.get("sizes", {}).get("tasks", []))
    rows = collect_rows(variants, stages)
    table = format_table(rows, tasks)
    videos = sorted(str(p.relative_to(root)) for p in (root / "eval").glob("*/videos/*.mp4"))
    timing = {n: (s or {}).get("seconds") for n, s in stages.items()}
    results = {"rows": rows, "tasks": tasks, "videos": videos, "stage_seconds": timing,
               "total_seconds": round(sum(t for t in timing.values() if t), 1), "config": config}
    atomic_write_json(root / "results.json", results)
    sizes = config.get("sizes", {})
    title = (f"Meta-World demo ({config.get('config', {}).get('scale', '?')}): "
             f"{sizes.get('eval_episodes_per_task', '?')} held-out episodes per task")
    atomic_write_text(root / "results.md", f"# {title}\n\n{table}\n\nVideos: {', '.join(videos) or 'none'}\n")
    plot = bar_plot(root / "success_rates.png", rows, tasks, title)
    print(f"\n{title}\n{table}\n")
    print(f"results: {root / 'results.json'}; plot: {plot or 'none'}; videos: {len(videos)} under {root / 'eval'}")
    return {"results": str(root / "results.json"), "plot": str(plot) if plot else None, "videos": videos}


# ----------------------------------------------------------------------------- several seeds

def aggregate_seeds(per_seed: Mapping[int, Mapping[str, Any]]) -> dict:
    """Per policy: mean success across seeds with a 95% t-interval, per-seed rates, pooled Wilson.

    `per_seed`: seed -> that seed's `results.json` (its "rows" and "tasks")."""
    seeds = sorted(per_seed)
    if not seeds:
        return {"seeds": [], "tasks": [], "rows": []}
    tasks = list(per_seed[seeds[0]].get("tasks", []))
    names: list[str] = []
    kinds: dict[str, str] = {}
    for s in seeds:
        for r in per_seed[s].get("rows", []):
            if r["name"] not in kinds:
                names.append(r["name"])
                kinds[r["name"]] = r.get("kind", "variant")
    rows = []
    for name in names:
        per = {s: r for s in seeds for r in per_seed[s].get("rows", []) if r["name"] == name}
        rated = {s: r["success_rate"] for s, r in per.items() if r.get("success_rate") is not None}
        overall = t_interval(list(rated.values()))
        counts = [_counts(r) for r in per.values() if r.get("success_rate") is not None]
        known = [c for c in counts if c[1]]
        k, n = sum(c[0] for c in known), sum(c[1] for c in known)
        per_task, per_task_ci = {}, {}
        for t in tasks:
            ti = t_interval([r["per_task"][t] for r in per.values() if (r.get("per_task") or {}).get(t) is not None])
            per_task[t], per_task_ci[t] = ti["mean"], ti["ci95"]
        l1 = [r["final_l1"] for r in per.values() if r.get("final_l1") is not None]
        rows.append({
            "name": name, "kind": kinds[name], "seeds": sorted(rated),
            "per_seed": {str(s): v for s, v in rated.items()},
            "success_rate": overall["mean"], "ci95": overall["ci95"], "sd": overall["sd"],
            "interval": "95% Student-t over per-seed success rates",
            "pooled_successes": k if known else None, "pooled_episodes": n if known else None,
            "pooled_ci95": ci_list(k, n) if n else None,
            "per_task": per_task, "per_task_ci95": per_task_ci,
            "final_l1": sum(l1) / len(l1) if l1 else None,
            "train_seconds": _mean([r.get("train_seconds") for r in per.values()]),
            "eval_seconds": _mean([r.get("eval_seconds") for r in per.values()]),
        })
    return {"seeds": seeds, "tasks": tasks, "rows": rows}


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def format_seeds_table(agg: Mapping[str, Any]) -> str:
    tasks = agg["tasks"]
    head = ["policy", "mean success [95% CI, seeds]", "per seed", "pooled episodes [Wilson 95%]", *tasks,
            "final L1 (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in agg["rows"]:
        per_seed = ", ".join(f"{100 * v:.0f}" for v in r["per_seed"].values()) or "-"
        pooled = "-" if not r.get("pooled_episodes") else \
            f"{r['pooled_successes']}/{r['pooled_episodes']} " + _pct(r["pooled_successes"] / r["pooled_episodes"],
                                                                     r["pooled_ci95"])
        cells = [r["name"], _pct(r["success_rate"], r["ci95"]), per_seed, pooled,
                 *[_pct(r["per_task"].get(t), r["per_task_ci95"].get(t)) for t in tasks], _num(r.get("final_l1"))]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(agg["seeds"])
    lines.append(f"\nMean over {n} seed(s) ({', '.join(map(str, agg['seeds']))}); interval: mean ± t(0.975, "
                 f"{n - 1})·sd/√{n} over the per-seed success rates (training and evaluation noise together), "
                 "clipped to [0, 100]; pooled: all seeds' episodes together (Wilson; episode noise only)." if n > 1 else
                 "\nOne seed: no spread across seeds can be measured (run with --seeds N).")
    return "\n".join(lines)


def write_seeds_report(root: str | Path, per_seed: Mapping[int, Mapping[str, Any]], config: Mapping[str, Any]) -> dict:
    """results.json / results.md / success_rates.png of a `--seeds N` demo under `root` (unchanged files stay)."""
    import json

    root = Path(root)
    agg = aggregate_seeds(per_seed)
    table = format_seeds_table(agg)
    results = {**agg, "seed_dirs": {str(s): f"seed_{s}" for s in agg["seeds"]}, "config": dict(config)}
    path = root / "results.json"
    text = json.dumps(results, indent=2, sort_keys=True)
    old = path.read_text() if path.is_file() else None
    title = f"Meta-World demo ({config.get('scale', '?')}): mean of {len(agg['seeds'])} seeds, 95% t-interval"
    plot = root / "success_rates.png"
    if old is None or json.dumps(json.loads(old), indent=2, sort_keys=True) != text or not plot.is_file():
        atomic_write_json(path, results)
        atomic_write_text(root / "results.md", f"# {title}\n\n{table}\n")
        plot = bar_plot(plot, agg["rows"], agg["tasks"], title)
    print(f"\n{title}\n{table}\n")
    print(f"results: {path}; plot: {plot or 'none'}; per-seed runs: {', '.join(f'seed_{s}' for s in agg['seeds'])}")
    return {"results": str(path), "plot": str(plot) if plot else None, "seeds": agg["seeds"]}
