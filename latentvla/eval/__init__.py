"""Closed-loop evaluation.

Simulator independent (shared by the LIBERO and Meta-World evaluators): `rollout` (episode loop,
open-loop chunk execution), `results` (JSONL log, resume, summary, table), `video` (MP4s),
`workers` (process pool), `transforms` (image flips, gripper conversion, quaternions),
`policies` (random / zero baselines, building a VLA or remote policy), `stats` (Wilson intervals,
exact McNemar, t-intervals), `compare` (`latentvla eval compare`: paired comparison of two runs).
LIBERO specifics: `suites` (the runnable standard + LIBERO-PRO suites), `libero_env` (rendering,
config, suites, init states, env adapter), `libero_eval` (`latentvla eval libero`) and `robustness`
(`latentvla eval robustness`). See docs/evaluation.md.
"""
