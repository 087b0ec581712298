"""The demo's result: a printed table, `results.json`, `results.md` and a bar plot PNG.

Rows: every variant (closed-loop success rate overall and per task, final training L1 and the
auxiliary metrics it logged, training and evaluation time), plus the random policy and the
scripted expert as floor and ceiling on the same held-out seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from latentvla.utils.atomic import atomic_path, atomic_write_json, atomic_write_text

# Metric names the trainer may log (first match wins); shown when present.
L1_KEYS = ("l1", "loss/l1", "train/l1", "l1_loss")
AUX_KEYS = ("code_acc", "cosine", "ce", "align_loss", "token_loss", "loss")


def _find(metrics: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, float] | None:
    for k in keys:
        for name, v in metrics.items():
            if (name == k or name.endswith("/" + k)) and isinstance(v, (int, float)):
                return name, float(v)
    return None


def collect_rows(variants: Sequence[str], stages: Mapping[str, Mapping | None]) -> list[dict]:
    rows = []
    for label in ("random", "expert"):
        ref = (stages.get("evaluate:reference") or {}).get(label)
        if ref:
            rows.append({"name": label, "kind": "reference", "success_rate": ref.get("success_rate"),
                         "per_task": {t: v.get("success_rate") for t, v in ref.get("per_task", {}).items()},
                         "eval_seconds": ref.get("seconds")})
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
        rows.append({"name": v, "kind": "variant", "success_rate": ev.get("success_rate"),
                     "per_task": {t: r.get("success_rate") for t, r in ev.get("per_task", {}).items()},
                     "final_l1": l1[1] if l1 else None, "aux_metrics": aux,
                     "train_seconds": train.get("train_seconds", train.get("seconds")),
                     "eval_seconds": ev.get("seconds"), "checkpoint": train.get("checkpoint")})
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_table(rows: Sequence[dict], tasks: Sequence[str]) -> str:
    head = ["policy", "success", *tasks, "final L1", "aux metrics", "train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        aux = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in (r.get("aux_metrics") or {}).items()) or "-"
        cells = [r["name"], _pct(r["success_rate"]), *[_pct(r["per_task"].get(t)) for t in tasks],
                 _num(r.get("final_l1")), aux, _num(r.get("train_seconds"), "{:.0f}"), _num(r.get("eval_seconds"), "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_plot(path: Path, rows: Sequence[dict], tasks: Sequence[str], title: str) -> Path | None:
    """Grouped bars: success per task for each policy (reference rows included)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[metaworld]')")
        return None
    import numpy as np

    names = [r["name"] for r in rows]
    groups = [*tasks, "overall"] if len(tasks) > 1 else ["overall"]
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4))
    x = np.arange(len(names))
    for gi, g in enumerate(groups):
        vals = [(r["success_rate"] if g == "overall" else r["per_task"].get(g)) for r in rows]
        bars = ax.bar(x + (gi - (len(groups) - 1) / 2) * width, [100 * (v or 0) for v in vals], width, label=g)
        ax.bar_label(bars, labels=["-" if v is None else f"{100 * v:.0f}" for v in vals], fontsize=7)  # 0 stays visible
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


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
    title = (f"Meta-World demo ({config.get('config', {}).get('scale', '?')}): {sizes.get('eval_episodes_per_task', '?')} "
             f"held-out episodes per task")
    atomic_write_text(root / "results.md", f"# {title}\n\n{table}\n\nVideos: {', '.join(videos) or 'none'}\n")
    plot = bar_plot(root / "success_rates.png", rows, tasks, title)
    print(f"\n{title}\n{table}\n")
    print(f"results: {root / 'results.json'}; plot: {plot or 'none'}; videos: {len(videos)} under {root / 'eval'}")
    return {"results": str(root / "results.json"), "plot": str(plot) if plot else None, "videos": videos}
