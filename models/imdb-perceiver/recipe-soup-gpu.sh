#!/usr/bin/env bash
# The bundled model's recipe on one CUDA GPU, in one command (7 minutes of training after the base):
#   bash models/imdb-perceiver/recipe-soup-gpu.sh [IMDB data dir] [output dir] [base model dir | scratch]
# The base is the 8-minute GPU model (recipe.sh's output; its weights are kept in training/base);
# `scratch` trains it first with recipe.sh into OUT/base (15 minutes of training in all, from nothing).
# Four runs train it on side by side on the one GPU, each time-boxed to 7 minutes (the cosine follows
# the clock), all with the ngram-nb teacher, dense distillation and batches of 64, each its own seed:
#   i  --splice-augment 0.5, lr 1e-4            j  splices and --shift-augment 8, lr 1e-4
#   k  --shift-augment 8, lr 5e-5               l  splices, lr 2e-4
# pcv-soup averages the four saved models (uniform) and pcv-export exports the soup.
# What ran (sixteenth session): the same runs through the GPU kit (.ci/gpu-kit/run.sh, RUNS="i j k l"
# MIN=7) on a lent H200: 8,873 / 9,027 / 5,015 / 9,079 steps; another card takes other step counts in
# the same minutes. The teacher is fitted once first (a step-less run of a tiny student writes its
# cache) so that the four runs share it instead of fitting it four times at once.
# Rerun after an interruption: unfinished runs resume from their checkpoints, finished ones
# (metrics.json written) are skipped.
# Without a GPU: recipe-soup.sh makes the previous bundled model (four CPU continuations, ~5.7 hours).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${1:-../shared/data/imdb}
OUT=${2:-imdb-perceiver-soup-gpu}
BASE=${3:-$HERE/training/base}
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "recipe-soup-gpu.sh trains on a CUDA GPU and torch sees none here; on a CPU, recipe-soup.sh makes the" \
       "previous bundled model in ~5.7 hours" >&2
  exit 2
fi
if [[ $BASE == scratch ]]; then
  bash "$HERE/recipe.sh" "$DATA" "$OUT/base"
  BASE=$OUT/base
fi
DATA_FLAGS=(--teacher ngram-nb --teacher-cache "$OUT/teacher-nb.npz" --unlabelled "$DATA/unsup.jsonl.gz" --dense-weight 1.0
            --val-limit 1000 --max-length 2048)
COMMON=(--init-from "$BASE" "${DATA_FLAGS[@]}" --epochs 1000 --attention-dropout 0 --max-minutes 7 --eval-every 250
        --checkpoint-every 250 --average-last 5 --batch-size 64 --warmup-steps 100 --device cuda)
mkdir -p "$OUT"
if [[ ! -f $OUT/teacher-nb.npz || ! -f $OUT/teacher-nb.scorer.npz ]]; then
  pcv-train "$DATA/train.jsonl.gz" --out "$OUT/teacher-run" "${DATA_FLAGS[@]}" --epochs 0 --splice-augment 0.5 \
    --num-latents 8 --d-latents 32 --d-model 32 --num-layers 1 --self-heads 2 --cross-heads 2 --device cpu
  rm -rf "$OUT/teacher-run"
fi

run() {  # run NAME FLAGS...: one continuation, skipped once finished
  local name=$1; shift
  if [[ ! -f $OUT/$name/metrics.json ]]; then
    pcv-train "$DATA/train.jsonl.gz" --out "$OUT/$name" "${COMMON[@]}" "$@" > "$OUT/$name.log" 2>&1
  fi
}
run i --lr 1e-4 --splice-augment 0.5 --seed 2 &
run j --lr 1e-4 --splice-augment 0.5 --shift-augment 8 --seed 3 &
run k --lr 5e-5 --shift-augment 8 --seed 4 &
run l --lr 2e-4 --splice-augment 0.5 --seed 5 &
failed=0
for job in $(jobs -p); do wait "$job" || failed=1; done
if ((failed)); then
  echo "a run failed or was interrupted (logs: $OUT/{i,j,k,l}.log); rerun this command to resume it" >&2
  exit 1
fi
pcv-soup "$OUT/soup" "$OUT/i" "$OUT/j" "$OUT/k" "$OUT/l"
pcv-export "$OUT/soup" "$OUT/soup/model.onnx" --verify-data "$DATA/train.jsonl.gz"
