"""Closed-loop evaluation.

Simulator independent (shared by the LIBERO and Meta-World evaluators): `rollout` (episode loop,
open-loop chunk execution), `results` (JSONL log, resume, summary, table), `video` (MP4s),
`workers` (process pool), `transforms` (image flips, gripper conversion, quaternions),
`policies` (random / zero baselines, building a VLA or remote policy).
LIBERO specifics: `libero_env` (rendering, config, suites, init states, env adapter) and
`libero_eval` (`latentvla eval libero`). See docs/evaluation.md.
"""
