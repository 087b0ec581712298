#!/usr/bin/env bash
# Train the VQ action-chunk tokenizer (paper-compatible entry; calls `latentvla lam action-train`).
#
# Values come from the environment or from arguments (arguments win; nothing to edit here):
#   DATA_ROOT_DIR  --data_root_dir   directory holding <name>/<version>/ RLDS datasets   (required)
#   DATA_MIX       --data_mix        mixture, dataset name or JSON list                  (required)
#   RESULTS_DIR    --results_dir     output dir for tokenizer_step_{N}.pt, logs, report  (required)
#   NUM_STEPS      --num_steps       default 100000        BATCH_SIZE  --batch_size  default 8
#   SAVE_EVERY     --save_every      default 10000         LOG_EVERY   --log_every   default 100
#   LEARNING_RATE  --learning_rate   default 1e-4          SEED        --seed        default 42
#   DEVICE         --device          default auto          DATASET_REGISTRY --dataset_registry
#   RESUME=1       --resume
# Any other option of `latentvla lam action-train --help` can be appended as an argument.
# PYTHON selects the interpreter (default: python).
#
# Example: DATA_ROOT_DIR=/data/rlds DATA_MIX=libero_goal RESULTS_DIR=runs/tok bash action.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"

args=()
add() {  # add FLAG VALUE when VALUE is non-empty
  if [ -n "${2:-}" ]; then args+=("$1" "$2"); fi
}
add --data_root_dir "${DATA_ROOT_DIR:-}"
add --data_mix "${DATA_MIX:-}"
add --results_dir "${RESULTS_DIR:-}"
add --num_steps "${NUM_STEPS:-}"
add --batch_size "${BATCH_SIZE:-}"
add --save_every "${SAVE_EVERY:-}"
add --log_every "${LOG_EVERY:-}"
add --learning_rate "${LEARNING_RATE:-}"
add --seed "${SEED:-}"
add --device "${DEVICE:-}"
add --dataset_registry "${DATASET_REGISTRY:-}"
case "${RESUME:-}" in
  1|true|True|yes) args+=(--resume) ;;
esac

exec "${PYTHON:-python}" -m latentvla lam action-train ${args[@]+"${args[@]}"} "$@"
