"""Parameter counts of a `LatentVLA` by component, and the checkpoint sizes they imply.

    rows = parameter_table(model)          # [{"component", "trainable", "frozen"}, ...]
    print(format_parameter_report(model, keep_checkpoints=3))

`latentvla train` prints the report when it starts and `benchmarks/real_shapes.py` records it, so
a head or LoRA setting that makes checkpoints huge is visible before the first step.
"""

from __future__ import annotations

from torch import nn

# First match wins; names are those of `LatentVLA.named_parameters()`.
_COMPONENTS = (
    ("lora", lambda n: "lora_" in n),
    ("new token rows", lambda n: n.endswith("new_rows") or n.endswith("new_output_rows")),
    ("action head", lambda n: n.startswith("action_head.")),
    ("proprio projector", lambda n: n.startswith("proprio_projector.")),
    ("strategy", lambda n: n.startswith("strategy.")),
    ("vision tower", lambda n: ".visual." in n),
    ("language model", lambda n: True),
)
# AdamW keeps two fp32 moments per trainable parameter (training_state.pt of the newest checkpoint).
_ADAM_BYTES_PER_PARAM = 8


def parameter_table(model: nn.Module) -> list[dict]:
    """One row per component with trainable / frozen parameter counts and trainable bytes."""
    rows = {name: {"component": name, "trainable": 0, "frozen": 0, "trainable_bytes": 0} for name, _ in _COMPONENTS}
    for n, p in model.named_parameters():  # tied weights are listed once
        comp = next(name for name, match in _COMPONENTS if match(n))
        if p.requires_grad:
            rows[comp]["trainable"] += p.numel()
            rows[comp]["trainable_bytes"] += p.numel() * p.element_size()
        else:
            rows[comp]["frozen"] += p.numel()
    return [r for r in rows.values() if r["trainable"] or r["frozen"]]


def checkpoint_sizes(model: nn.Module, keep_checkpoints: int = 3) -> dict:
    """Expected bytes: the shipped policy weights, the newest checkpoint (weights + optimizer state)
    and a whole run that keeps `keep_checkpoints` (older ones hold weights only)."""
    rows = parameter_table(model)
    weights = sum(r["trainable_bytes"] for r in rows)
    optimizer = sum(r["trainable"] for r in rows) * _ADAM_BYTES_PER_PARAM
    run = keep_checkpoints * weights + optimizer if keep_checkpoints > 0 else None  # 0 = every checkpoint kept
    return {"policy_weights": weights, "newest_checkpoint": weights + optimizer, "run_total": run}


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f} M"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def format_parameter_report(model: nn.Module, keep_checkpoints: int = 3) -> str:
    rows = parameter_table(model)
    total_t = sum(r["trainable"] for r in rows)
    total_f = sum(r["frozen"] for r in rows)
    lines = [f"{'component':<18} {'trainable':>12} {'frozen':>12}"]
    for r in rows:
        lines.append(f"{r['component']:<18} {_millions(r['trainable']):>12} {_millions(r['frozen']):>12}")
    lines.append(f"{'total':<18} {_millions(total_t):>12} {_millions(total_f):>12}")
    sizes = checkpoint_sizes(model, keep_checkpoints)
    run = (f"a run keeping {keep_checkpoints} checkpoints ~{_gb(sizes['run_total'])}" if sizes["run_total"] is not None
           else "every checkpoint is kept (--keep_checkpoints 0)")
    lines.append(f"checkpoint: policy weights {_gb(sizes['policy_weights'])}, newest with optimizer state "
                 f"{_gb(sizes['newest_checkpoint'])}; {run}")
    return "\n".join(lines)
