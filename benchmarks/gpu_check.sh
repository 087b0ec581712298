#!/usr/bin/env bash
# GPU check for a session that holds one GPU for ~15 minutes: what the CPU machines cannot measure.
#
#   bash benchmarks/gpu_check.sh                    # everything, writes ${OUT:-gpu_check_out}/
#   PARTS=prep,a bash benchmarks/gpu_check.sh       # only some parts (prep, a, b, c)
#   PRESET=tiny DEVICE=cpu PARTS=prep,b,c TRAIN_STEPS=4 bash benchmarks/gpu_check.sh   # CPU dry run of the flags
#
# Parts, in order, each under `timeout` (its budget, never past the global DEADLINE):
#   prep  the Qwen3-VL-2B-shaped random backbone (`latentvla tiny-vlm --preset qwen3-vl-2b`, full depth),
#         the datasets (a copy of tests/fixtures/tfds_written = `libero_tiny_no_noops`, unannotated; a synthetic
#         annotated LIBERO dataset `libero_goal_no_noops_latent`, latent_idx int64 [4] in [0,16), latent_z
#         float32 [4,128]) and a tiny action tokenizer (`latentvla lam action-train`, a few steps);
#   a     `benchmarks/real_shapes.py --device cuda` at full depth: bf16, sdpa vs flash_attention_2, batch
#         8/16/32 samples/s, peak memory, MFU, batch-1 inference ms per chunk and Hz (json + log);
#   b     1-GPU `torchrun -m latentvla.cli train` of TRAIN_STEPS (50) steps per variant at 2B shapes, per-device
#         batch 8, bf16 (the default on GPU), one checkpoint at the end; metrics.jsonl kept;
#   c     one closed-loop `latentvla eval libero` episode (libero_goal task 0, EGL) of the baseline checkpoint.
#
# Robust by design: `set -u` only, every part's exit code is recorded and the next part runs anyway. Parts that
# passed are recorded in $WORK/status.tsv and skipped when the script runs again (FORCE=1 redoes them); a part that
# would start after DEADLINE is marked SKIPPED. So on a 15-minute lease: one command with a 600 s limit; if the
# summary lists SKIPPED or timed-out parts, run the same command again at once (WORK survives only while the
# machine is held). Typical times are unmeasured (no GPU session has run it yet); the budgets are guesses.
# Big files (backbone ~4 GB, checkpoints ~2 GB each) live in $WORK; logs, json and metrics in $OUT (copied to
# $WORK/results too, and back into $OUT by the next invocation, so the last OUT has everything).
#
# Environment (defaults): OUT (gpu_check_out), WORK ($TMPDIR or /tmp, + /latentvla_gpu_check), PYTHON
# (.venv/bin/python if present, else python: it needs torch with CUDA, the latentvla dependencies and, for part c,
# libero; the repo is put on PYTHONPATH), DEVICE (cuda), PRESET (qwen3-vl-2b), VARIANTS (all five), TRAIN_STEPS
# (50), BATCH (8), NUM_WORKERS (0), DEADLINE (560 s for the whole script), T_PREP (150), T_A (210), T_B (70 per
# variant), T_C (150), EVAL_MAX_STEPS (unset: the suite's 300 policy steps), REAL_SHAPES_ARGS (extra flags for
# part a), FORCE (0). Exit code 0 when every recorded part passed, else 1.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
START=$(date +%s)

OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-${TMPDIR:-/tmp}/latentvla_gpu_check}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python; fi
fi
PY=$PYTHON
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-qwen3-vl-2b}
PARTS=${PARTS:-prep,a,b,c}
VARIANTS=${VARIANTS:-baseline la_align la_direct la_cond la_tok}
TRAIN_STEPS=${TRAIN_STEPS:-50}
BATCH=${BATCH:-8}
NUM_WORKERS=${NUM_WORKERS:-0}  # the datasets hold 2-12 batches an epoch: worker start-up per epoch would dominate
DEADLINE=${DEADLINE:-560}
T_PREP=${T_PREP:-150}
T_A=${T_A:-210}
T_B=${T_B:-70}
T_C=${T_C:-150}
FORCE=${FORCE:-0}

VLM=$WORK/vlm_$PRESET
DATA=$WORK/data
TOKDIR=$WORK/tokenizer
RUNS=$WORK/runs
STATUS=$WORK/status.tsv
RESULTS=$WORK/results          # a copy of $OUT that survives between invocations
LOG=$OUT/gpu_check.log
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PY REPO OUT WORK DEVICE PRESET VLM DATA TOKDIR RUNS BATCH TRAIN_STEPS NUM_WORKERS  # for the bash -c parts
mkdir -p "$RESULTS" && cp -a "$RESULTS/." "$OUT/" 2>/dev/null
touch "$STATUS"

say() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
want() { case ",$PARTS," in *",$1,"*) return 0 ;; esac; return 1; }
TAB=$'\t'
passed() { [ "$FORCE" != 1 ] && grep -q "^$1${TAB}0${TAB}" "$STATUS"; }
record() {  # name rc seconds note
  grep -v "^$1${TAB}" "$STATUS" > "$STATUS.tmp"; printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$STATUS.tmp"
  mv "$STATUS.tmp" "$STATUS"; cp -a "$OUT/." "$RESULTS/" 2>/dev/null
}

# run NAME BUDGET_S LOGFILE CMD...: under timeout (<= the time left), exit code recorded, never fatal.
run() {
  local name=$1 budget=$2 logf=$3; shift 3
  if passed "$name"; then say "$name: passed in an earlier invocation, skipped"; return 0; fi
  local left=$(( START + DEADLINE - $(date +%s) ))
  local t=$(( budget < left ? budget : left ))
  if [ "$t" -lt 20 ]; then
    say "$name: SKIPPED, ${left}s left before DEADLINE=${DEADLINE}s (run the script again to continue)"
    record "$name" skipped 0 "deadline"; return 1
  fi
  local desc="$*"; [ "$1" = bash ] && [ "$2" = -c ] && desc="${3##*; }"  # the function call, not its body
  say "$name: start (timeout ${t}s): $desc"
  local t0=$(date +%s)
  timeout -k 15 "$t" "$@" > "$logf" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local note=""; [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out after ${t}s"
  say "$name: exit $rc after ${dt}s ${note} (log $logf)"
  [ "$rc" = 0 ] || tail -n 5 "$logf" | sed 's/^/    | /' | tee -a "$LOG"
  record "$name" "$rc" "$dt" "$note"
  return "$rc"
}

say "OUT=$OUT WORK=$WORK PYTHON=$PY DEVICE=$DEVICE PRESET=$PRESET PARTS=$PARTS DEADLINE=${DEADLINE}s"
{ "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__); print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
  "$PY" -c "import importlib.util as u; print('flash_attn', bool(u.find_spec('flash_attn')), 'libero', bool(u.find_spec('libero')))"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } \
  > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt" | tee -a "$LOG"

# ------------------------------------------------------------------------------------------- prep
prep_backbone() {
  [ -f "$VLM/config.json" ] && { echo "exists: $VLM"; return 0; }
  "$PY" -m latentvla.cli tiny-vlm "$VLM" --preset "$PRESET" --overwrite True
}
prep_data() {
  mkdir -p "$DATA"
  [ -d "$DATA/libero_tiny_no_noops" ] || cp -r "$REPO/tests/fixtures/tfds_written/libero_tiny_no_noops" "$DATA/"
  [ -f "$DATA/libero_goal_no_noops_latent/1.0.0/features.json" ] && { echo "exists: annotated data"; return 0; }
  "$PY" - "$DATA" <<'EOF'
import sys
import numpy as np
from latentvla.data.features import tensor_feature
from latentvla.data.synthetic import write_synthetic_dataset

def latent(e, t):  # the labels `latentvla lam annotate` writes: K=16 codes x C=4, Z=128
    rng = np.random.default_rng(1000 * e + t)
    return {"latent_idx": rng.integers(0, 16, 4).astype(np.int64), "latent_z": rng.normal(size=(4, 128)).astype(np.float32)}

feats = {"latent_idx": tensor_feature((4,), "int64"), "latent_z": tensor_feature((4, 128))}
out = write_synthetic_dataset(sys.argv[1], "libero_goal_no_noops_latent", num_episodes=4, steps=24, image_size=128,
                              layout="libero", extra_step_features=feats, extra_fn=latent, overwrite=True)
print("wrote", out)
EOF
}
prep_tokenizer() {
  ls "$TOKDIR"/tokenizer_step_*.pt > /dev/null 2>&1 && { echo "exists: $TOKDIR"; return 0; }
  "$PY" -m latentvla.cli lam action-train --data_root_dir "$DATA" --data_mix libero_tiny_no_noops \
    --results_dir "$TOKDIR" --num_steps 20 --batch_size 8 --save_every 20 --log_every 10 --device "$DEVICE"
}
if want prep; then
  run prep_backbone "$T_PREP" "$OUT/prep_backbone.log" bash -c "$(declare -f prep_backbone); prep_backbone"
  run prep_data 60 "$OUT/prep_data.log" bash -c "$(declare -f prep_data); prep_data"
  run prep_tokenizer 90 "$OUT/prep_tokenizer.log" bash -c "$(declare -f prep_tokenizer); prep_tokenizer"
fi
TOK=$(ls "$TOKDIR"/tokenizer_step_*.pt 2>/dev/null | sort -V | tail -n 1)
export TOK

# ------------------------------------------------------------------------------------------- a
if want a; then
  # shellcheck disable=SC2086
  run a_real_shapes "$T_A" "$OUT/real_shapes_${DEVICE}.log" "$PY" benchmarks/real_shapes.py --device "$DEVICE" \
    --vlm_path "$VLM" --batch_sizes 8,16,32 --steps 5 --warmup 2 --infer_calls 10 --tmp_dir "$WORK" \
    --json "$OUT/real_shapes_${DEVICE}.json" ${REAL_SHAPES_ARGS:-}
fi

# ------------------------------------------------------------------------------------------- b
train_variant() {  # vla_id
  local v=$1 mix=libero_tiny_no_noops extra=()
  case $v in
    la_align|la_direct|la_cond) mix=libero_goal_latent ;;
    la_tok) extra=(--action_tokenizer_ckpt "${TOK:-missing-tokenizer}") ;;
  esac
  rm -rf "${RUNS:?}/$v"  # a failed earlier attempt would be refused (or resumed)
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m latentvla.cli train \
    --vla_id "$v" --vlm_path "$VLM" --data_root_dir "$DATA" --data_mix "$mix" --run_root_dir "$RUNS" --run_id "$v" \
    --per_device_batch_size "$BATCH" --max_steps "$TRAIN_STEPS" --save_step "$TRAIN_STEPS" --log_step 1 \
    --num_workers "$NUM_WORKERS" --progress False --device "$DEVICE" "${extra[@]}"
  local rc=$?
  [ -f "$RUNS/$v/metrics.jsonl" ] && cp "$RUNS/$v/metrics.jsonl" "$OUT/train_$v.metrics.jsonl"
  du -sb "$RUNS/$v/checkpoints"/step_* > "$OUT/train_$v.checkpoint_bytes.txt" 2>/dev/null
  return $rc
}
if want b; then
  for v in $VARIANTS; do
    run "b_train_$v" "$T_B" "$OUT/train_$v.log" bash -c "$(declare -f train_variant); train_variant $v"
  done
fi

# ------------------------------------------------------------------------------------------- c
if want c; then
  CKPT=$RUNS/baseline/checkpoints/step_$TRAIN_STEPS
  eval_steps=(); [ -n "${EVAL_MAX_STEPS:-}" ] && eval_steps=(--max_steps "$EVAL_MAX_STEPS")
  export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
  run c_eval_libero "$T_C" "$OUT/eval_libero.log" \
    "$PY" -m latentvla.cli eval libero --pretrained_checkpoint "$CKPT" --task_suite_name libero_goal \
    --max_tasks 1 --num_trials_per_task 1 --render_backend egl --device "$DEVICE" --overwrite True \
    --output_dir "$OUT/eval_libero" --log_dir "$OUT/eval_libero/logs" ${eval_steps[@]+"${eval_steps[@]}"}
fi

# ------------------------------------------------------------------------------------------- summary
cp -a "$OUT/." "$RESULTS/" 2>/dev/null
"$PY" - "$OUT" "$STATUS" "$DEVICE" > "$OUT/summary.md" 2>&1 <<'EOF'
import json, statistics, sys, traceback
from pathlib import Path

out, status, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def fmt(d):
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def parts():
    print("## gpu_check summary\n\npart | exit | seconds | note\n--- | --- | --- | ---")
    for line in status.read_text().splitlines():
        name, rc, secs, note = (line.split("\t") + [""] * 4)[:4]
        print(f"{name} | {'PASS' if rc == '0' else rc} | {secs} | {note}")


def real_shapes():
    f = out / f"real_shapes_{device}.json"
    if not f.is_file():
        return
    print("\n### a: real_shapes (train rows: samples/s, peak GiB, MFU; infer rows: ms/chunk, Hz; goal >= 250 Hz)\n")
    for r in json.loads(f.read_text()):
        if "error" in r:
            print(f"- {r.get('variant')} {r.get('attn', '')} batch {r.get('batch', '')}: ERROR {r['error']}")
        elif r.get("infer"):
            print(f"- {r['variant']} {r['attn']} infer b1: {r['infer_ms']:.1f} ms/chunk = {r['Hz']:.0f} Hz "
                  f"(autocast: {r['infer_ms_amp']:.1f} ms = {r['Hz_amp']:.0f} Hz)")
        elif "samples_s" in r:
            print(f"- {r['variant']} {r['attn']} b{r['batch']}: {r['samples_s']:.1f} samples/s, "
                  f"{r['peak GiB']:.1f} GiB, MFU {r['mfu']:.1%}")
        else:  # CPU rows (dry run)
            print(f"- {fmt(r)}")


def training():
    print("\n### b: training (metrics.jsonl)\n")
    for f in sorted(out.glob("train_*.metrics.jsonl")):
        recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if not recs:
            continue
        v = f.name[len("train_"):-len(".metrics.jsonl")]
        sps = statistics.median(r["samples_per_s"] for r in recs[len(recs) // 5:])
        last = {k: x for k, x in recs[-1].items() if k not in ("lr", "epoch", "step") and isinstance(x, float)}
        print(f"- {v}: {len(recs)} steps, median {sps:.1f} samples/s (first 20% dropped); first loss {recs[0]['loss']:.4f}; "
              f"last: {fmt(last)}")
        ck = out / f"train_{v}.checkpoint_bytes.txt"
        if ck.is_file() and ck.read_text().strip():
            print(f"  checkpoint bytes: {ck.read_text().split()[0]}")


def evaluation():
    print("\n### c: LIBERO episode\n")
    f = out / "eval_libero" / "summary.json"
    if f.is_file():
        s = json.loads(f.read_text())
        run = s.get("run", {})
        print(f"- {s.get('successes')}/{s.get('episodes')} success, {s.get('env_steps')} env steps in "
              f"{s.get('episode_seconds')} s ({s.get('env_steps_per_second')} steps/s), render {run.get('render_backend')}, "
              f"torch {run.get('versions', {}).get('torch')}, checkpoint {run.get('checkpoint')}")
    f = out / "eval_libero" / "episodes.jsonl"
    if f.is_file():
        for line in f.read_text().splitlines():
            print("- episode:", line[:400])


for section in (parts, real_shapes, training, evaluation):
    try:
        section()
    except Exception:  # a malformed file must not hide the other sections
        print(f"({section.__name__}: summary failed)\n" + traceback.format_exc(limit=2))
EOF
cat "$OUT/summary.md" | tee -a "$LOG"
cp -a "$OUT/." "$RESULTS/" 2>/dev/null
say "done in $(( $(date +%s) - START ))s; results in $OUT (a copy in $RESULTS)"
fails=$(awk -F'\t' '$2 != "0"' "$STATUS" | wc -l)
exit $(( fails > 0 ? 1 : 0 ))
