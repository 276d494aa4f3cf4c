#!/usr/bin/env bash
# There, on the lent GPU (after prepare.sh here): pcv-train runs side by side for $MIN minutes, then
# a torch read of each run's best model on the seeded 2,500 validation reviews (evalruns.py); each
# run comes back as $OUT/<name>.tgz.NN (15 MB pieces; cat them and untar).
#   run(command="bash .ci/gpu-kit/run.sh", carry=[".gpu"], timeout_s=600)
#   A call carries at most 64 MiB: the checkout (~33 MB since the sixteenth session) and all of .gpu
#   (~42 MB) are over it. prepare.sh says so; then move models/imdb-perceiver/model.onnx and
#   model.safetensors aside for the call (no run reads them; a and i-l read training/base) and put
#   them back after, and/or carry only what the runs read (.gpu/xz plus one teacher's two caches).
#   RUNS="h f c" MIN=8: a call must end inside 600 s; three runs share the card as in the ninth
#   session (gpu-h100-8min), so c is its control. A dry run here: DEV=cpu MIN=1 RUNS=c OUT=/tmp/o bash ...
# Runs (the flags beyond the recipe's data flags):
#   c  the bundled model's architecture, fresh: 256 latents x 192, 6 layers, 2.58M parameters
#   b  wider: 256 latents x 256, 8 self heads, 4.28M parameters
#   a  the bundled model trained on from its weights, lower rate
#   d  c with --shift-augment 8 (texts moved by 0-7 bytes in the 8-byte patches; pcv-batch --shifts 0,4
#      gave the bundled model +0.8 pt from two views)
#   e  b with --shift-augment 8
#   f  c with --splice-augment 0.5 (half of each batch texts spliced from two reviews, labelled by the
#      teacher: the bundled model scores 98.5 % on its own training reviews, 88.8 % on validation)
#   g  f with --shift-augment 8 too
#   h  f with the stronger teacher: --teacher ngram-nb (word 1-3-grams, naive-Bayes scaled; its own cache)
#   i-l  continuations of the 8-minute GPU model (models/imdb-perceiver/training/base): the runs of
#      models/imdb-perceiver/recipe-soup-gpu.sh, whose soup is the bundled model since the sixteenth
#      session (the ngram-nb teacher, batch 64, each its own seed and augmentation). RUNS="i j k l" MIN=7,
#      carrying only .gpu/xz and .gpu/teacher-nb* (the checkout and all of .gpu are over the 64 MiB a
#      call takes; the ngram teacher is not read by these runs; model.onnx and model.safetensors of the
#      bundled model were moved aside for the call)
#   m-p  a second round from the soup of i-l, 3 minutes: its soup tied with the first (not shipped)
set -u
DEV=${DEV:-cuda}; MIN=${MIN:-8}; RUNS=${RUNS:-h f c}; OUT=${OUT:?set by the device}
W=/tmp/pcvgpu; rm -rf $W; mkdir -p $W/pkg/pcv $W/runs $W/data "$OUT"
for d in export runtime bench models; do ln -s "$PWD/$d" $W/pkg/pcv/$d; done
export PYTHONPATH=$W/pkg PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
if compgen -G ".gpu/site/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $W/site .gpu/site/*.whl || exit
  export PYTHONPATH=$W/site:$PYTHONPATH
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
for f in train unsup; do xz -dc -T0 .gpu/xz/$f.jsonl.xz > $W/data/$f.jsonl || exit; done
D=$W/data
COMMON=(--teacher ngram --teacher-cache .gpu/teacher.npz --unlabelled $D/unsup.jsonl --dense-weight 1.0 --val-limit 1000
        --max-length 2048 --epochs 1000 --device $DEV --attention-dropout 0 --max-minutes $MIN --eval-every 250
        --checkpoint-every 250 --average-last 5)
declare -A FLAGS=(
  [a]="--init-from models/imdb-perceiver --batch-size 64 --lr 3e-4 --warmup-steps 200"
  [b]="--num-latents 256 --d-latents 256 --d-model 128 --num-layers 6 --self-heads 8 --cross-heads 8 --cross-widening 2 --self-widening 2 --batch-size 128 --lr 1e-3 --warmup-steps 300"
  [c]="--num-latents 256 --d-latents 192 --d-model 128 --num-layers 6 --self-heads 6 --cross-heads 8 --cross-widening 2 --self-widening 2 --batch-size 128 --lr 1e-3 --warmup-steps 300"
)
FLAGS[d]="${FLAGS[c]} --shift-augment 8"
FLAGS[e]="${FLAGS[b]} --shift-augment 8"
FLAGS[f]="${FLAGS[c]} --splice-augment 0.5"
FLAGS[g]="${FLAGS[f]} --shift-augment 8"
FLAGS[h]="${FLAGS[f]} --teacher ngram-nb --teacher-cache .gpu/teacher-nb.npz"  # later flags win
CONT="--init-from models/imdb-perceiver/training/base --teacher ngram-nb --teacher-cache .gpu/teacher-nb.npz --batch-size 64 --warmup-steps 100"
FLAGS[i]="$CONT --lr 1e-4 --splice-augment 0.5 --seed 2"
FLAGS[j]="$CONT --lr 1e-4 --splice-augment 0.5 --shift-augment 8 --seed 3"
FLAGS[k]="$CONT --lr 5e-5 --shift-augment 8 --seed 4"
FLAGS[l]="$CONT --lr 2e-4 --splice-augment 0.5 --seed 5"
# m-p: a second round from the soup of i-l (pcv-soup .gpu/g4 i j k l, carried as .gpu/g4), lower rates
CONT2="--init-from .gpu/g4 --teacher ngram-nb --teacher-cache .gpu/teacher-nb.npz --batch-size 64 --warmup-steps 50"
FLAGS[m]="$CONT2 --lr 5e-5 --splice-augment 0.5 --seed 6"
FLAGS[n]="$CONT2 --lr 5e-5 --splice-augment 0.5 --shift-augment 8 --seed 7"
FLAGS[o]="$CONT2 --lr 3e-5 --shift-augment 8 --seed 8"
FLAGS[p]="$CONT2 --lr 1e-4 --splice-augment 0.5 --seed 9"
for r in $RUNS; do
  # shellcheck disable=SC2086
  (python3 -c 'import sys; from pcv.export.cli import train_main; sys.exit(train_main())' "$D/train.jsonl" \
     --out $W/runs/$r "${COMMON[@]}" ${FLAGS[$r]} > $W/runs/$r.log 2>&1; echo "run $r exit $?") &
done
for _ in $(seq $((MIN * 4 + 8))); do  # a look every 15 s, so the wait ends soon after the runs
  sleep 15; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
  for r in $RUNS; do grep -h '"step"' $W/runs/$r.log 2>/dev/null | tail -1 | sed "s/^/$r /"; done
  [[ -z "$(jobs -r)" ]] && break
done
wait
python3 .ci/gpu-kit/evalruns.py $W/runs $D/train.jsonl $DEV
for r in $RUNS; do
  [[ -d $W/runs/$r ]] || continue
  cp $W/runs/$r.log $W/runs/$r/train.log
  tar czf $W/$r.tgz -C $W/runs/$r --exclude checkpoint .
  split -b 15m -d $W/$r.tgz $OUT/$r.tgz.
done
ls -la $OUT
