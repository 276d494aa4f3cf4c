#!/usr/bin/env bash
# The bundled model's recipe on 2 CPU cores, in one command (~5.7 hours, no GPU needed):
#   bash models/imdb-perceiver/recipe-soup.sh [IMDB data dir] [output dir] [base model dir]
# The base is the 8-minute GPU model (recipe.sh's output; its weights are kept in training/base).
# Four runs train it on, each time-boxed on this machine's clock (the cosine follows it): with
# --shift-augment 8 (ngram teacher, lr 5e-5, 95 min), with --splice-augment 0.5 (ngram teacher,
# 85 min), with splices and the ngram-nb teacher (85 min), and with splices, shifts, the ngram-nb
# teacher and --seed 1 (75 min). pcv-soup averages the four runs' saved models; pcv-export exports
# the soup. What ran (twelfth to fifteenth sessions): these commands, one per session, on a shared
# 2-core CPU; a faster machine takes more steps in the same minutes.
# Rerun the same command after an interruption: a run with a checkpoint resumes, a finished run
# (metrics.json written) is skipped.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${1:-../shared/data/imdb}
OUT=${2:-imdb-perceiver-soup}
BASE=${3:-$HERE/training/base}
COMMON=(--init-from "$BASE" --unlabelled "$DATA/unsup.jsonl.gz" --dense-weight 1.0 --val-limit 1000 --max-length 2048
        --epochs 1000 --attention-dropout 0 --eval-every 150 --checkpoint-every 75 --average-last 5 --batch-size 32
        --warmup-steps 30 --device cpu)
NGRAM=(--teacher ngram --teacher-cache "$OUT/teacher.npz")
NB=(--teacher ngram-nb --teacher-cache "$OUT/teacher-nb.npz")

run() {  # run NAME FLAGS...: one continuation, skipped once finished
  local name=$1; shift
  if [[ ! -f $OUT/$name/metrics.json ]]; then
    pcv-train "$DATA/train.jsonl.gz" --out "$OUT/$name" "${COMMON[@]}" "$@"
  fi
}
run shift "${NGRAM[@]}" --lr 5e-5 --max-minutes 95 --shift-augment 8
run splice "${NGRAM[@]}" --lr 1e-4 --max-minutes 85 --splice-augment 0.5
run splice-nb "${NB[@]}" --lr 1e-4 --max-minutes 85 --splice-augment 0.5
run splice-nb-shift "${NB[@]}" --lr 1e-4 --max-minutes 75 --splice-augment 0.5 --shift-augment 8 --seed 1
pcv-soup "$OUT/soup" "$OUT/shift" "$OUT/splice" "$OUT/splice-nb" "$OUT/splice-nb-shift"
pcv-export "$OUT/soup" "$OUT/soup/model.onnx" --verify-data "$DATA/train.jsonl.gz"
