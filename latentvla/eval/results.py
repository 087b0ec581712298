"""Evaluation results: the per-episode JSONL log, run metadata for resume, summary and table.

Simulator independent (LIBERO and Meta-World evaluators share it).

- `EpisodeLog(path)`: one JSON object per finished episode, appended and fsync'ed line by line,
  so a killed run loses at most the episode in flight. `load()` drops a truncated last line (the
  trace of a kill mid-write) and rewrites the file without it; a corrupt line elsewhere is an
  error naming the file and line.
- `check_run_meta(out_dir, meta, keys)`: an output dir remembers the settings that decide episode
  outcomes (`run.json`); resuming with different settings is refused instead of mixing results.
- `summarize(records, ...)`: success per task and per suite (+ totals), each with its Wilson 95%
  interval (`ci95`: [lo, hi], `latentvla.eval.stats`); `format_table(summary)`.

An episode record has at least: `suite`, `task_id`, `task`, `instruction`, `trial`, `success`,
`steps`, `seconds` (plus optional `seed`, `policy_calls`, `video`, `worker`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError
from latentvla.eval.stats import ci_list, format_rate
from latentvla.utils.atomic import atomic_path, atomic_write_json, atomic_write_text

REQUIRED_RECORD_KEYS = ("suite", "task_id", "task", "trial", "success", "steps", "seconds")


def episode_key(record: Mapping[str, Any]) -> tuple[str, int, int]:
    return (str(record["suite"]), int(record["task_id"]), int(record["trial"]))


class EpisodeLog:
    """Append-only JSONL of finished episodes (see module doc)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> list[dict]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        records: list[dict] = []
        truncated_tail = False
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # last line without newline: a write cut short by a kill
                    truncated_tail = True
                    break
                raise LatentVLAError(f"{self.path}: line {i + 1} is not valid JSON; fix or remove "
                                     "that line to resume") from None
            if isinstance(rec, dict):
                missing = [k for k in REQUIRED_RECORD_KEYS if k not in rec]
            else:
                missing = list(REQUIRED_RECORD_KEYS)
            if missing:
                raise LatentVLAError(f"{self.path}: line {i + 1} lacks key(s) {', '.join(missing)}")
            records.append(rec)
        if truncated_tail or (raw and not raw.endswith(b"\n")):  # keep the next append on its own line
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        missing = [k for k in REQUIRED_RECORD_KEYS if k not in record]
        if missing:
            raise ValueError(f"episode record lacks {missing}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())


def check_run_meta(out_dir: str | os.PathLike, meta: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Write `run.json` on the first run; on resume, refuse when any of `keys` changed."""
    path = Path(out_dir) / "run.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise LatentVLAError(f"{path}: not valid JSON ({e}); remove it or use another --output_dir") from None
        changed = [k for k in keys if old.get(k) != meta.get(k)]
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {meta.get(k)!r}" for k in changed)
            raise LatentVLAError(
                f"{path}: this output dir holds a run with different settings ({diffs}); "
                "use another --output_dir, or --overwrite True to start over")
        merged = {**old, **{k: v for k, v in meta.items() if k not in keys}}
        atomic_write_json(path, merged)
    else:
        atomic_write_json(path, dict(meta))


def _rate(successes: int, episodes: int) -> float:
    return successes / episodes if episodes else 0.0


def summarize(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None,
              expected_episodes: int | None = None) -> dict:
    """Success per task and per suite, plus totals. `meta` is copied under "run"."""
    tasks: dict[tuple[str, int], dict] = {}
    for r in sorted(records, key=episode_key):
        key = (str(r["suite"]), int(r["task_id"]))
        t = tasks.setdefault(key, {"suite": key[0], "task_id": key[1], "task": r["task"],
                                   "instruction": r.get("instruction", ""), "episodes": 0,
                                   "successes": 0, "steps": 0, "seconds": 0.0})
        t["episodes"] += 1
        t["successes"] += int(bool(r["success"]))
        t["steps"] += int(r["steps"])
        t["seconds"] += float(r["seconds"])
    suites: dict[str, dict] = {}
    for t in tasks.values():
        t["success_rate"] = _rate(t["successes"], t["episodes"])
        t["ci95"] = ci_list(t["successes"], t["episodes"])
        s = suites.setdefault(t["suite"], {"suite": t["suite"], "tasks": 0, "episodes": 0, "successes": 0})
        s["tasks"] += 1
        s["episodes"] += t["episodes"]
        s["successes"] += t["successes"]
    for s in suites.values():
        s["success_rate"] = _rate(s["successes"], s["episodes"])
        s["ci95"] = ci_list(s["successes"], s["episodes"])
    episodes = sum(t["episodes"] for t in tasks.values())
    successes = sum(t["successes"] for t in tasks.values())
    steps = sum(t["steps"] for t in tasks.values())
    seconds = sum(t["seconds"] for t in tasks.values())
    out = {
        "run": dict(meta or {}),
        "episodes": episodes,
        "successes": successes,
        "success_rate": _rate(successes, episodes),
        "ci95": ci_list(successes, episodes),  # Wilson 95% interval of success_rate
        "complete": expected_episodes is None or episodes >= expected_episodes,
        "expected_episodes": expected_episodes,
        "env_steps": steps,
        "episode_seconds": round(seconds, 3),
        "env_steps_per_second": round(steps / seconds, 3) if seconds > 0 else None,
        "suites": sorted(suites.values(), key=lambda s: s["suite"]),
        "tasks": [tasks[k] for k in sorted(tasks)],
    }
    for t in out["tasks"]:
        t["seconds"] = round(t["seconds"], 3)
    return out


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table: one row per task, one per suite, and the total; success with its Wilson 95% interval."""
    rows = [("suite", "task", "episodes", "success", "95% CI (Wilson)")]

    def cells(d: Mapping[str, Any]) -> tuple[str, str]:
        ci = d.get("ci95")
        if ci is None and d.get("episodes"):  # a summary written before intervals were recorded
            ci = ci_list(int(d["successes"]), int(d["episodes"]))
        return format_rate(d["success_rate"]), "-" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    from_bddl = (summary.get("run") or {}).get("instruction_source") == "bddl"
    for t in summary["tasks"]:
        name = t["task"]
        if from_bddl and t.get("instruction"):  # LIBERO-PRO _lan / _task: the name is the original task's
            name = f'"{t["instruction"]}"'
        name = name if len(name) <= 60 else name[:57] + "..."
        rows.append((t["suite"], f"{t['task_id']:>2} {name}", str(t["episodes"]), *cells(t)))
    sep = len(rows)
    for s in summary["suites"]:
        rows.append((s["suite"], f"(all {s['tasks']} tasks)", str(s["episodes"]), *cells(s)))
    rows.append(("TOTAL", "", str(summary["episodes"]), *cells(summary)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]

    def fmt(r):
        return (f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  "
                f"{r[4]:>{widths[4]}}")

    rule = "-" * len(fmt(rows[0]))
    lines = [fmt(rows[0]), rule, *map(fmt, rows[1:sep]), rule, *map(fmt, rows[sep:])]
    if not summary.get("complete", True):
        lines.append(f"(incomplete: {summary['episodes']} of {summary.get('expected_episodes')} episodes)")
    return "\n".join(lines)


def pyplot(missing: Callable[[str], Any], what: str) -> Any:
    """matplotlib.pyplot on the headless Agg backend; None (said through `missing`) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        missing(f"matplotlib is not installed: no {what}")
        return None
    return plt


def save_bar_chart(plt: Any, fig: Any, ax: Any, path: Path, names: Sequence[str], ylabel: str, title: str,
                   **title_kw: Any) -> Path:
    """Policy / suite names under the bars, success 0-105 %, the PNG written atomically."""
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.set_title(title, **title_kw)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
