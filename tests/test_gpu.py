"""GPU checks (CUDA provider, IO binding, fp16): skipped cleanly where there is no GPU.

Run on a GPU machine with onnxruntime-gpu installed: `python -m pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="no CUDAExecutionProvider (needs an NVIDIA GPU and onnxruntime-gpu)"),
]

from conftest import ROOT  # noqa: E402
from pcv.runtime import PerceiverByteTokenizer  # noqa: E402
from pcv.runtime.cli import main  # noqa: E402
from pcv.runtime.session import OnnxClassifier, SessionConfig, default_model_path  # noqa: E402


def _enc(texts, seq):
    return PerceiverByteTokenizer()(texts, max_length=seq, truncation=True, padding="longest")


def test_cuda_matches_cpu_with_and_without_io_binding(review_texts):
    enc = _enc(review_texts[:16], 2048)
    cpu = OnnxClassifier(default_model_path(), SessionConfig(provider="cpu")).logits(enc.input_ids, enc.attention_mask)
    bound = OnnxClassifier(default_model_path(), SessionConfig(provider="cuda"))
    plain = OnnxClassifier(default_model_path(), SessionConfig(provider="cuda", io_binding=False))
    assert bound.io_binding and not plain.io_binding
    for clf in (bound, plain):
        got = clf.logits(enc.input_ids, enc.attention_mask)
        assert np.abs(got - cpu).max() < 1e-3  # TF32/cuDNN kernels differ from MLAS in the last bits


def test_pcv_batch_on_cuda_gives_the_cpu_labels(tmp_path):
    outs = {}
    for prov in ("cpu", "cuda"):
        out = tmp_path / f"{prov}.jsonl"
        assert main([str(ROOT / "examples" / "reviews.jsonl"), "-o", str(out), "--provider", prov, "-q"]) == 0
        outs[prov] = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    assert outs["cpu"] == outs["cuda"]


def test_fp16_variant_on_cuda_against_torch(tmp_path, review_texts):
    torch = pytest.importorskip("torch")
    from pcv.export.modeling import load_classifier
    from pcv.export.variants import build_variant

    src = default_model_path()
    fp16 = build_variant("fp16", src, tmp_path / "m.fp16.onnx").path
    model = load_classifier(str(src.parent))
    enc = _enc(review_texts[:32], 2048)
    with torch.no_grad():
        ref = model(inputs=torch.from_numpy(enc.input_ids), attention_mask=torch.from_numpy(enc.attention_mask)).logits.numpy()
    got = OnnxClassifier(fp16, SessionConfig(provider="cuda")).logits(enc.input_ids, enc.attention_mask)
    assert np.abs(got - ref).max() <= 1e-2
    assert (got.argmax(1) == ref.argmax(1)).mean() == 1.0


def test_gpu_bench_runs_on_cuda(tmp_path):
    pytest.importorskip("torch")
    from pcv.bench.gpu import main as gpu_main

    assert gpu_main(["--out", str(tmp_path), "--device", "cuda", "--quick"]) == 0
    res = json.loads((tmp_path / "gpu.json").read_text())
    rows = res["models"]["tiny"]["onnxruntime"]
    assert all(r["session_providers"][0] == "CUDAExecutionProvider" for r in rows)
    assert "use_tf32=0" in res["models"]["tiny"]["tf32_parity"] and res["machine"]["gpu"]
