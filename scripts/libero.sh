#!/usr/bin/env bash
# LIBERO closed-loop evaluation (the paper's scripts/libero.sh). Placeholders come from the
# environment, so the script is never edited:
#
#   PRETRAINED_CHECKPOINT=runs/<run>/checkpoints/step_30000 VLA_ID=la_tok TASK_SUITE=libero_goal \
#     bash scripts/libero.sh [extra latentvla-eval flags...]
#
#   PRETRAINED_CHECKPOINT  policy checkpoint directory (required)
#   TASK_SUITE             libero_spatial | libero_object | libero_goal (default) | libero_10 | libero_90
#   VLA_ID                 if set, checked against the checkpoint's vla_id
#   LIBERO_PYTHONPATH      prepended to PYTHONPATH (only for a LIBERO checkout; the [libero] extra needs none)
#   NUM_TRIALS (50)  NUM_WORKERS (1)  SEED (7)  OUTPUT_DIR  PYTHON (.venv/bin/python if present)
#   WAIT=1                 run in the foreground (default: background, like the paper; log below)
#
# Runs experiments/robot/libero/run_libero_eval.py with nohup; output goes to logs/libero/*.out,
# results to OUTPUT_DIR (default eval_results/libero/<suite>-<checkpoint>-seed<seed>/): episodes.jsonl,
# summary.json, and the table at the end of the log. Re-running the same command resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PRETRAINED_CHECKPOINT:?set PRETRAINED_CHECKPOINT to a policy checkpoint directory}"
TASK_SUITE=${TASK_SUITE:-libero_goal}
NUM_TRIALS=${NUM_TRIALS:-50}
NUM_WORKERS=${NUM_WORKERS:-1}
SEED=${SEED:-7}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${LIBERO_PYTHONPATH:+:$LIBERO_PYTHONPATH}${PYTHONPATH:+:$PYTHONPATH}"

args=(--pretrained_checkpoint "$PRETRAINED_CHECKPOINT" --task_suite_name "$TASK_SUITE"
      --num_trials_per_task "$NUM_TRIALS" --num_workers "$NUM_WORKERS" --seed "$SEED")
[ -n "${VLA_ID:-}" ] && args+=(--vla_id "$VLA_ID")
[ -n "${OUTPUT_DIR:-}" ] && args+=(--output_dir "$OUTPUT_DIR")

mkdir -p logs/libero
log="logs/libero/${TASK_SUITE}-${VLA_ID:-policy}-$(date +%Y%m%d-%H%M%S).out"
cmd=("$PYTHON" experiments/robot/libero/run_libero_eval.py "${args[@]}" "$@")
if [ "${WAIT:-0}" = "1" ]; then
  "${cmd[@]}" 2>&1 | tee "$log"
  exit "${PIPESTATUS[0]}"
fi
nohup "${cmd[@]}" > "$log" 2>&1 &
echo "LIBERO evaluation started (pid $!); log: $log"
