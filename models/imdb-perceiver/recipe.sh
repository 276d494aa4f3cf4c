#!/usr/bin/env bash
# The bundled model from nothing, on one CUDA GPU (15 minutes of training):
#   bash models/imdb-perceiver/recipe.sh IMDB_DATA_DIR [OUTPUT_DIR]
# IMDB_DATA_DIR holds train.jsonl.gz (25,000 labelled reviews) and unsup.jsonl.gz (50,000 unlabelled).
#  1. base: a fresh 2.58M-parameter Perceiver (256 latents x 192, 6 layers, 2,048 bytes) with the n-gram
#     teacher on the labelled and unlabelled reviews and dense distillation, batches of 128, 8 minutes
#     (the cosine schedule follows the clock).
#  2. four runs train the base on side by side, 7 minutes each, with the ngram-nb teacher, dense
#     distillation and batches of 64, each its own seed and augmentation:
#       i  --splice-augment 0.5, lr 1e-4            j  splices and --shift-augment 8, lr 1e-4
#       k  --shift-augment 8, lr 5e-5               l  splices, lr 2e-4
#     The ngram-nb teacher is fitted once first (a step-less run of a tiny student writes its cache),
#     so that the four runs share it.
#  3. pcv-soup averages the four models (uniform) and pcv-export exports the soup: OUTPUT_DIR/soup.
# Time-boxed runs take as many steps as the GPU allows: another GPU gives other step counts. For fixed
# steps, replace `--epochs 1000 --max-minutes M` with an epoch count (the schedule then follows steps).
# Rerun after an interruption: unfinished runs resume from their checkpoints, finished ones
# (metrics.json written) are skipped.
set -euo pipefail
DATA=${1:?usage: recipe.sh IMDB_DATA_DIR [OUTPUT_DIR]}
OUT=${2:-imdb-perceiver-run}
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "recipe.sh trains on a CUDA GPU and torch sees none here (on 2 CPU cores the same steps would take days)" >&2
  exit 2
fi
mkdir -p "$OUT"
if [[ ! -f $OUT/base/metrics.json ]]; then
  pcv-train "$DATA/train.jsonl.gz" --out "$OUT/base" --labels neg,pos --teacher ngram --teacher-cache "$OUT/teacher.npz" \
    --unlabelled "$DATA/unsup.jsonl.gz" --dense-weight 1.0 --shift-augment 0 --val-limit 1000 --max-length 2048 --attention-dropout 0 \
    --num-latents 256 --d-latents 192 --d-model 128 --num-layers 6 --self-heads 6 --cross-heads 8 --cross-widening 2 \
    --self-widening 2 --batch-size 128 --lr 1e-3 --warmup-steps 300 --epochs 1000 --max-minutes 8 --eval-every 250 \
    --checkpoint-every 250 --average-last 5 --device cuda
fi

DATA_FLAGS=(--labels neg,pos --teacher ngram-nb --teacher-cache "$OUT/teacher-nb.npz" --unlabelled "$DATA/unsup.jsonl.gz" --dense-weight 1.0
            --val-limit 1000 --max-length 2048)
COMMON=(--init-from "$OUT/base" "${DATA_FLAGS[@]}" --epochs 1000 --attention-dropout 0 --max-minutes 7 --eval-every 250
        --checkpoint-every 250 --average-last 5 --batch-size 64 --warmup-steps 100 --device cuda)
if [[ ! -f $OUT/teacher-nb.npz || ! -f $OUT/teacher-nb.scorer.npz ]]; then
  pcv-train "$DATA/train.jsonl.gz" --out "$OUT/teacher-run" "${DATA_FLAGS[@]}" --epochs 0 --splice-augment 0.5 \
    --num-latents 8 --d-latents 32 --d-model 32 --num-layers 1 --self-heads 2 --cross-heads 2 --device cpu
  rm -rf "$OUT/teacher-run"
fi

run() {  # run NAME FLAGS...: one continuation of the base, skipped once finished
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
