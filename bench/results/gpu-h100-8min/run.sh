#!/usr/bin/env bash
# On the lent GPU: three pcv-train runs side by side for $MIN minutes each, then a torch read of each
# best model on the 2,500 validation reviews; each run comes back as $OUT/<name>.tgz (split if large).
set -u
DEV=${DEV:-cuda}; MIN=${MIN:-8}; LIMIT=${LIMIT:-}
W=/tmp/pcvgpu; rm -rf $W; mkdir -p $W/site $W/pkg/pcv $W/runs
tar xzf .gpu/site.tgz -C $W/site
for d in export runtime bench models; do ln -s "$PWD/$d" $W/pkg/pcv/$d; done
export PYTHONPATH=$W/site:$W/pkg PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, transformers, onnxruntime as ort; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), 'ort', ort.__version__, ort.get_available_providers())"
D=.gpu/data
COMMON=(--teacher ngram --teacher-cache ${TEACHER:-.gpu/teacher.npz} --unlabelled $D/unsup.jsonl.gz --dense-weight 1.0 --val-limit 1000
        --max-length 2048 --epochs 1000 --device $DEV --attention-dropout 0 --max-minutes $MIN --eval-every 250
        --checkpoint-every 250 --average-last 5 ${LIMIT:+--limit $LIMIT})
train() { local name=$1; shift; python3 -c 'import sys; from pcv.export.cli import train_main; sys.exit(train_main())' \
            "$D/train.jsonl.gz" --out $W/runs/$name "${COMMON[@]}" "$@" > $W/runs/$name.log 2>&1; echo "run $name exit $?"; }
train a --init-from models/imdb-perceiver --batch-size 64 --lr 3e-4 --warmup-steps 200 &
train b --num-latents 256 --d-latents 256 --d-model 128 --num-layers 6 --self-heads 8 --cross-heads 8 --cross-widening 2 \
        --self-widening 2 --batch-size 128 --lr 1e-3 --warmup-steps 300 &
train c --num-latents 256 --d-latents 192 --d-model 128 --num-layers 6 --self-heads 6 --cross-heads 8 --cross-widening 2 \
        --self-widening 2 --batch-size 128 --lr 1e-3 --warmup-steps 300 &
for i in 1 2 3 4 5 6 7 8 9; do sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
  for r in a b c; do grep -h '"step"' $W/runs/$r.log 2>/dev/null | tail -1 | sed "s/^/$r /"; done
  [ -z "$(jobs -r)" ] && break; done
wait
python3 .gpu/evalruns.py $W/runs $DEV ${LIMIT:-0}
for r in a b c; do
  [ -d $W/runs/$r ] || continue
  cp $W/runs/$r.log $W/runs/$r/train.log
  tar czf $W/$r.tgz -C $W/runs/$r --exclude checkpoint .
  split -b 15m -d $W/$r.tgz $OUT/$r.tgz.
done
ls -la $OUT
