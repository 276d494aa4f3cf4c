#!/usr/bin/env bash
# pcv on a CUDA machine, in one command: install onnxruntime-gpu when it is missing, record what
# onnxruntime offers and what each session really runs on, run the GPU tests, then the benchmark
# (ONNX Runtime's CUDA provider against torch on the same GPU and against the CPU).
#   bash bench/gpu_check.sh [OUT_DIR] [WHEEL]
# OUT_DIR (default gpu-check) gets providers.json, sessions.json, pytest-gpu.txt, bench/ (JSON,
# markdown, plots) and gpu/ (python -m pcv.bench.gpu: torch on the GPU against the CUDA provider).
# WHEEL: an onnxruntime-gpu wheel to install if CUDAExecutionProvider is missing, or its parts
# (WHEEL.part-aa, WHEEL.part-ab, ...: joined first). QUICK=1: a short benchmark, for a dry run;
# DATA=FILE: the reviews to benchmark on (default: the 200 in tests/fixtures); MODELS=bundled: leave
# the 201M architecture out of gpu/. Rerunning
# is safe: a step whose output exists is skipped (delete OUT_DIR to measure again). On a machine
# without a GPU every step runs as far as it can and says what it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
WHEEL=${2:-}
DATA=${DATA:-tests/fixtures/reviews.jsonl}
mkdir -p "$OUT"

has_cuda() { python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; }
if ! has_cuda && [[ -n $WHEEL ]]; then
  if [[ ! -f $WHEEL ]] && compgen -G "$WHEEL.part-*" > /dev/null; then
    cat "$WHEEL".part-* > "$WHEEL"  # parts sorted by name
  fi
  pip uninstall -q -y onnxruntime || true  # onnxruntime and onnxruntime-gpu cannot be installed together
  pip install -q --no-deps "$WHEEL"
fi

python3 - "$OUT/providers.json" <<'PY'
import json, platform, sys
import onnxruntime as ort
info = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(), "python": platform.python_version()}
try:
    import torch
    info |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
except ImportError as e:
    info["torch"] = f"not importable: {e}"
open(sys.argv[1], "w").write(json.dumps(info, indent=2) + "\n")
print(json.dumps(info))
PY

# What each provider really opens the bundled model on (a provider that does not start is recorded
# with onnxruntime's reason, never measured as if it had).
python3 - "$OUT/sessions.json" <<'PY'
import json, sys
from pcv.runtime.errors import PcvError
from pcv.runtime.session import OnnxClassifier, SessionConfig, default_model_path
rows = []
for provider in ("cpu", "cuda", "tensorrt"):
    try:
        clf = OnnxClassifier(default_model_path(), SessionConfig(provider=provider))
        rows.append({"asked": provider, "ran": clf.provider, "session_providers": clf.session.get_providers()})
    except PcvError as e:
        rows.append({"asked": provider, "error": str(e)})
open(sys.argv[1], "w").write(json.dumps(rows, indent=2) + "\n")
for r in rows:
    print(r)
PY

if [[ ! -f $OUT/pytest-gpu.txt ]]; then
  python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/pytest-gpu.part" 2>&1 || true
  mv "$OUT/pytest-gpu.part" "$OUT/pytest-gpu.txt"
fi
tail -1 "$OUT/pytest-gpu.txt"

if [[ ! -f $OUT/bench/bench.json ]]; then
  if [[ ${QUICK:-0} == 1 ]]; then
    pcv-bench --providers cuda,cpu --data "$DATA" --quick --out "$OUT/bench"
  else
    pcv-bench --providers cuda,cpu --data "$DATA" --limit 200 --batch-sizes 1,8,64,256 --seq-lens 2048 \
      --latency-runs 20 --out "$OUT/bench"
  fi
fi
# torch eager on the GPU against onnxruntime's CUDA provider, per variant and IO binding, for the
# bundled model and the 201M architecture (MODELS=bundled to leave the big one out); on a machine
# without CUDA, a dry run on the CPU (quick, the tiny model).
if [[ ! -f $OUT/gpu/gpu.json ]]; then
  if has_cuda && [[ ${QUICK:-0} != 1 ]]; then
    python3 -m pcv.bench.gpu --out "$OUT/gpu" --device cuda --data "$DATA" --models "${MODELS:-bundled,language-perceiver}"
  elif has_cuda; then
    python3 -m pcv.bench.gpu --out "$OUT/gpu" --device cuda --data "$DATA" --quick
  else
    python3 -m pcv.bench.gpu --out "$OUT/gpu" --device cpu --data "$DATA" --quick
  fi
fi
echo "gpu_check: results in $OUT/"
