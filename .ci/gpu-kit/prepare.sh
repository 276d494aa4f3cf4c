#!/usr/bin/env bash
# Here, before a session's first call to the lent GPU: builds the ignored folder .gpu/ that run.sh
# reads there (a checkout starts without it; ignored files do not outlive a session).
#   bash .ci/gpu-kit/prepare.sh [IMDB data dir]        (pcv[export] installed; ~10 CPU minutes)
# .gpu/xz/{train,unsup}.jsonl.xz   the IMDB files recompressed with xz: 27 MB against 38 MB of gzip,
#                                  so that they, the teacher cache and the checkout fit the 64 MiB carry
# .gpu/teacher.npz                 the n-gram teacher fitted on the full train split (the recipe's data
#                                  flags), written by one step of a tiny student; the runs there load it
# .gpu/teacher.scorer.npz          the same teacher as a function of any text (--splice-augment), 3 MB
# .gpu/teacher-nb{,.scorer}.npz    the same for --teacher ngram-nb (run h)
# .gpu/site/                       only where the device's transformers is one pcv does not support:
#                                  SITE=1 adds wheels for transformers 4.57.6 (see run.sh)
# Then call run with carry [".gpu"] and command `bash .ci/gpu-kit/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data/imdb}
mkdir -p .gpu/xz
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
for f in train unsup; do
  if [[ ! -f .gpu/xz/$f.jsonl.xz ]]; then
    gzip -dc "$DATA/$f.jsonl.gz" | xz -9 -T2 > .gpu/xz/$f.jsonl.xz.part
    mv .gpu/xz/$f.jsonl.xz.part .gpu/xz/$f.jsonl.xz
  fi
  # the texts must be the same bytes that the teacher cache's fingerprint was taken from
  cmp <(gzip -dc "$DATA/$f.jsonl.gz" | md5sum) <(xz -dc .gpu/xz/$f.jsonl.xz | md5sum)
done
for t in ngram ngram-nb; do
  cache=.gpu/teacher${t#ngram}.npz  # teacher.npz, teacher-nb.npz
  if [[ ! -f $cache || ! -f ${cache%.npz}.scorer.npz ]]; then
    pcv-train "$DATA/train.jsonl.gz" --out .gpu/teacher-run --teacher $t --teacher-cache $cache \
      --unlabelled "$DATA/unsup.jsonl.gz" --dense-weight 1.0 --val-limit 1000 --max-length 2048 --epochs 0 \
      --splice-augment 0.5 \
      --num-latents 8 --d-latents 32 --d-model 32 --num-layers 1 --self-heads 2 --cross-heads 2 --device cpu
    rm -rf .gpu/teacher-run
  fi
done
if [[ ${SITE:-0} == 1 && ! -d .gpu/site ]]; then
  # python 3.12 on the device (KINDS.md); tokenizers is compiled, the rest is pure python
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/site \
    transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2
fi
du -sh .gpu/*
# what a call would carry: the checkout's tracked files (as they are now) and all of .gpu
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
kit=$(du -sb .gpu | cut -f1)
if (( tracked + kit > 64 * 1024 * 1024 )); then
  echo "the checkout ($((tracked >> 20)) MiB) and .gpu ($((kit >> 20)) MiB) are over a call's 64 MiB: move" \
       "models/imdb-perceiver/model.onnx and model.safetensors aside for the call, or carry only .gpu/xz and the" \
       "teacher caches the runs read (run.sh's header)" >&2
fi
