"""Closed-loop evaluation.

Simulator independent: `engine` (registered simulator adapters; resume, workers, videos, summary),
`rollout` (episode loop, open-loop chunk execution), `results` (JSONL log, run metadata, summary,
table), `video`, `workers`, `transforms` (image flips, gripper conversion, quaternions), `policies`
(random / zero / expert baselines, building a VLA or remote policy), `stats` (Wilson intervals, exact
McNemar, t-intervals), `compare` (`latentvla eval compare`). Simulators: LIBERO (`suites`,
`libero_env`, `libero_eval`: `latentvla eval libero`; `robustness`: `latentvla eval robustness`) and
Meta-World (`metaworld_env`, `metaworld_eval`: `latentvla eval metaworld`). See docs/evaluation.md.
"""
