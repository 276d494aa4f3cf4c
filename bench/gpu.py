"""GPU figures in one run: torch eager on the GPU (the reference recipe: transformers' tokenizer,
padded to 2,048) against ONNX Runtime's CUDA provider (fp32, fp16, optimized fp16; IO binding on
and off) at batch 1 / 8 / 64 / 256, for the bundled model and the language-perceiver architecture
(201M parameters, random weights). Also batch-1 latency (p50/p99), device memory, parity with the
CPU with TF32 on and off, the providers every session really ran on, and the GPU, driver and CUDA
versions. A dry run on a CPU (--device cpu) runs every step a CPU can and records what it skipped.

    python -m pcv.bench.gpu --out gpu-check/gpu                      # on a CUDA machine
    python -m pcv.bench.gpu --out /tmp/dry --device cpu --quick      # dry run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pcv.runtime.errors import PcvError
from pcv.runtime.session import PROVIDERS, OnnxClassifier, SessionConfig, default_model_path
from pcv.runtime.tokenizer import PerceiverByteTokenizer

from .bench import _read_texts
from .memory import _write_input

# --models: name -> what it is
MODELS = {
    "bundled": "the bundled model (models/imdb-perceiver, 2.58M parameters)",
    "language-perceiver": "deepmind/language-perceiver's architecture (201M parameters), random weights",
    "tiny": "a tiny random Perceiver (the dry run's and the tests' stand-in)",
}
ORT_VARIANTS = ("fp32", "fp16", "optimized-fp16")


@dataclass(frozen=True, kw_only=True)
class GpuBenchConfig:
    out: str
    device: str = "cuda"  # cuda, or cpu for a dry run
    models: tuple[str, ...] = ("bundled", "language-perceiver")
    batch_sizes: tuple[int, ...] = (1, 8, 64, 256)
    texts_per_point: int = 512  # texts run at each batch size (the data cycled), at least 2 batches
    latency_runs: int = 50  # batch-1 runs timed one by one for p50/p99
    data: str = "tests/fixtures/reviews.jsonl"  # real reviews (cycled as needed); the CLI finds it from anywhere
    e2e_records: int = 2000  # pcv-batch --provider DEVICE end to end on this many records of data


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def gpu_info() -> dict:
    """The GPU, its driver, the CUDA/cuDNN versions torch and onnxruntime were built with."""
    import onnxruntime as ort

    info: dict = {"onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}
    if hasattr(ort, "get_build_info"):
        info["ort_build_info"] = ort.get_build_info()
    try:
        import torch

        info |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            info |= {"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
                     "cudnn": torch.backends.cudnn.version(), "gpu_memory_mib": torch.cuda.get_device_properties(0).total_memory / 2**20}
    except ImportError as e:
        info["torch"] = f"not importable: {e}"
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    else:
        info["nvidia_smi"] = "not found"
    return info


def _texts(path: str, n: int) -> list[str]:
    got, _ = _read_texts(path, n)
    if not got:
        raise PcvError(f"{path}: no texts to benchmark on")
    return [got[i % len(got)] for i in range(n)]


def _torch_model(name: str):
    from pcv.export import SIZE_PRESETS, build_config, load_classifier
    from transformers import PerceiverForSequenceClassification

    if name == "bundled":
        return load_classifier(str(default_model_path().parent)).eval()
    import torch

    torch.manual_seed(0)
    size = SIZE_PRESETS["language-perceiver" if name == "language-perceiver" else "tiny"]
    return PerceiverForSequenceClassification(build_config(size)).eval()


def build_onnx(model, work: Path) -> dict[str, Path]:
    """fp32 export, its fp16 variant, and fp16 of its optimized (fused) variant."""
    from pcv.export import ExportConfig, build_variant, export_onnx

    paths = {"fp32": work / "m.onnx", "fp16": work / "m.fp16.onnx", "optimized": work / "m.optimized.onnx",
             "optimized-fp16": work / "m.optimized.fp16.onnx"}
    export_onnx(model, paths["fp32"], ExportConfig(verify=False))
    build_variant("fp16", paths["fp32"], paths["fp16"])
    build_variant("optimized", paths["fp32"], paths["optimized"])
    _fused_fp16(paths["optimized"], paths["optimized-fp16"])
    return {k: paths[k] for k in ORT_VARIANTS}


def _fused_fp16(src: Path, out: Path) -> None:
    """fp16 of the fused graph with onnxruntime's own converter for it: its fused ops (Attention,
    SkipLayerNormalization, ...) take fp16 whole, where the fp16 variant's block list would split them."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel
    from pcv.export import finish_variant

    om = OnnxModel(onnx.load(str(src)))
    om.convert_float_to_float16(keep_io_types=True)
    om.topological_sort()
    finish_variant(om.model, src, out, "fp16", {"pcv.fp16_of": "optimized"})


def _latency(run, inputs: list, device: str) -> dict:
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        run(x)
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)), "runs": len(times)}


def _rate(run, batches: list, device: str) -> float:
    run(batches[0])  # warm-up: the first run of a shape allocates (and cuDNN picks its algorithms)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        run(b)
        n += b[0].shape[0]
    _sync(device)
    return n / (time.perf_counter() - t0)


def torch_rows(model, texts: list[str], cfg: GpuBenchConfig) -> list[dict]:
    """The reference recipe on the device: transformers' tokenizer padded to the model's length, eager."""
    import torch
    from transformers import PerceiverTokenizer

    max_length = model.config.max_position_embeddings
    tok = PerceiverTokenizer(model_max_length=max_length)
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        if dtype is torch.float16 and cfg.device != "cuda":
            rows.append({"pipeline": f"torch eager {dtype_name}", "skipped": "fp16 eager is for CUDA"})
            continue
        m = model.to(device=cfg.device, dtype=dtype)
        if cfg.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def run(batch):
            with torch.inference_mode():
                return m(inputs=batch[0], attention_mask=batch[1]).logits

        def batches(b: int) -> list:
            out = []
            for i in range(0, max(cfg.texts_per_point, 2 * b), b):
                enc = tok([texts[(i + j) % len(texts)] for j in range(b)], padding="max_length", truncation=True,
                          max_length=max_length, return_tensors="pt")
                out.append((enc["input_ids"].to(cfg.device), enc["attention_mask"].to(cfg.device)))
            return out

        row: dict = {"pipeline": f"torch eager {dtype_name}", "padding": max_length,
                     "examples_per_s": {b: _rate(run, batches(b), cfg.device) for b in cfg.batch_sizes}}
        row["latency_batch1"] = _latency(run, batches(1)[: cfg.latency_runs], cfg.device)
        if cfg.device == "cuda":
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
        model.to(device="cpu", dtype=torch.float32)
    return rows


def _device_memory_used() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return (total - free) / 2**20
    except ImportError:
        pass
    return None


def ort_rows(paths: dict[str, Path], texts: list[str], cfg: GpuBenchConfig) -> list[dict]:
    """pcv's session on each variant: pcv's tokenizer, length-sorted batches padded to their longest;
    each row's logits on 64 texts compared with onnxruntime's CPU provider on the fp32 graph."""
    ordered = sorted(texts, key=len)
    rows = []
    cpu: dict[str, OnnxClassifier] = {}

    def reference(fp32: Path, enc) -> np.ndarray:
        if "clf" not in cpu:
            cpu["clf"] = OnnxClassifier(fp32, SessionConfig(provider="cpu"))
        return cpu["clf"].logits(enc.input_ids, enc.attention_mask)

    for variant, path in paths.items():
        for io_binding in (True, False):
            name = f"onnxruntime {cfg.device} {variant}, IO binding {'on' if io_binding else 'off'}"
            before = _device_memory_used()
            try:
                clf = OnnxClassifier(path, SessionConfig(provider=cfg.device, io_binding=io_binding))
            except PcvError as e:
                rows.append({"pipeline": name, "skipped": str(e)})
                continue

            max_length = clf.info.max_length
            tok = PerceiverByteTokenizer(model_max_length=max_length)

            def run(batch, clf=clf):
                return clf.logits(batch[0], batch[1])

            def batches(b: int) -> list:
                n = max(cfg.texts_per_point, 2 * b)
                chunk = [ordered[(i * len(ordered)) // n] for i in range(n)]  # the length spread, in order
                encs = (tok(chunk[i : i + b], max_length=max_length, truncation=True, padding="longest")
                        for i in range(0, n, b))
                return [(e.input_ids, e.attention_mask) for e in encs]

            row: dict = {"pipeline": name, "variant": variant, "io_binding": io_binding,
                         "session_providers": clf.session.get_providers(),
                         "examples_per_s": {b: _rate(run, batches(b), cfg.device) for b in cfg.batch_sizes}}
            singles = [(e.input_ids, e.attention_mask) for e in
                       (tok([t], max_length=max_length, truncation=True) for t in texts[: cfg.latency_runs])]
            row["latency_batch1"] = _latency(run, singles, cfg.device)
            probe = tok(texts[:64], max_length=max_length, truncation=True, padding="longest")
            got = clf.logits(probe.input_ids, probe.attention_mask)
            ref = reference(paths["fp32"], probe)
            row |= {"max_abs_logit_vs_cpu_fp32": float(np.abs(got - ref).max()),
                    "label_agreement_vs_cpu_fp32": float(np.mean(got.argmax(1) == ref.argmax(1)))}
            after = _device_memory_used()
            if before is not None and after is not None:
                row["device_memory_mib"] = after - before  # onnxruntime's arena keeps what it took at the peak
            rows.append(row)
            del clf
    return rows


def tf32_parity(fp32: Path, texts: list[str], cfg: GpuBenchConfig) -> dict:
    """Max |Δlogit| of the CUDA provider against the CPU with TF32 matmuls on (its default) and off."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"no CUDAExecutionProvider (onnxruntime has {ort.get_available_providers()})"}
    cpu_session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    max_length = int(cpu_session.get_modelmeta().custom_metadata_map.get("pcv.max_length", 2048))
    enc = PerceiverByteTokenizer(model_max_length=max_length)(texts[:64], max_length=max_length, truncation=True, padding="longest")
    feed = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
    cpu = cpu_session.run(None, feed)[0]
    out = {}
    for tf32 in ("1", "0"):
        s = ort.InferenceSession(str(fp32), providers=[("CUDAExecutionProvider", {"use_tf32": tf32})])
        got = s.run(None, feed)[0]
        out[f"use_tf32={tf32}"] = {"session_providers": s.get_providers(), "max_abs_logit": float(np.abs(got - cpu).max()),
                                   "label_agreement": float(np.mean(got.argmax(1) == cpu.argmax(1)))}
    return out


def pcv_batch_end_to_end(model: Path, cfg: GpuBenchConfig, work: Path) -> dict:
    """The installed pcv-batch on e2e_records real records, the whole process timed."""
    exe = shutil.which("pcv-batch")
    if exe is None:
        return {"skipped": "pcv-batch is not installed"}
    data = work / "e2e.jsonl"
    records = _texts(cfg.data, cfg.e2e_records)
    _write_input(data, cfg.e2e_records, records)
    out = work / "e2e.out.jsonl"
    t0 = time.perf_counter()
    p = subprocess.run([exe, str(data), "-o", str(out), "--model", str(model), "--provider", cfg.device],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = p.stderr.strip().splitlines()
    return {"exit": p.returncode, "records": cfg.e2e_records, "distinct_texts": len(set(records)), "wall_s": wall,
            "records_per_s": cfg.e2e_records / wall,
            "first_stderr_line": lines[0] if lines else "", "last_stderr_line": lines[-1] if lines else ""}


def run_gpu_bench(cfg: GpuBenchConfig) -> dict:
    if cfg.device not in PROVIDERS or cfg.device == "tensorrt":
        raise PcvError(f"--device {cfg.device!r}: cuda, or cpu for a dry run")
    bad = [m for m in cfg.models if m not in MODELS]
    if bad:
        raise PcvError(f"--models {','.join(bad)}: unknown; one of {', '.join(MODELS)}")
    texts = _texts(cfg.data, max(cfg.texts_per_point, cfg.latency_runs, 64))
    result: dict = {"config": asdict(cfg), "machine": gpu_info(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="pcv-gpu-") as tmp:
        for name in cfg.models:
            print(f"pcv.bench.gpu: {name}: {MODELS[name]}", file=sys.stderr, flush=True)
            work = Path(tmp) / name
            work.mkdir()
            model = _torch_model(name)
            t0 = time.perf_counter()
            paths = build_onnx(model, work)
            entry: dict = {"what": MODELS[name], "parameters": sum(p.numel() for p in model.parameters()),
                           "export_s": time.perf_counter() - t0}
            entry["torch"] = torch_rows(model, texts, cfg)
            entry["onnxruntime"] = ort_rows(paths, texts, cfg)
            entry["tf32_parity"] = tf32_parity(paths["fp32"], texts, cfg)
            if name in ("bundled", "tiny"):  # tiny: so that a dry run exercises it
                entry["pcv_batch"] = pcv_batch_end_to_end(paths["fp32"], cfg, work)
            result["models"][name] = entry
            del model
    return result


def markdown(result: dict) -> str:
    m, cfg = result["machine"], result["config"]
    sizes = cfg["batch_sizes"]
    lines = [f"GPU: {m.get('gpu') or 'none'} ({m.get('nvidia_smi')}); torch {m.get('torch')} (CUDA {m.get('torch_cuda')}), "
             f"onnxruntime {m['onnxruntime']} ({', '.join(m['ort_providers'])}); device {cfg['device']}.", ""]
    for name, e in result["models"].items():
        lines += [f"## {name}: {e['what']}", "", "| pipeline | " + " | ".join(f"b{b} ex/s" for b in sizes)
                  + " | b1 p50 / p99 ms | memory MiB | vs CPU fp32: max \\|Δ\\| / labels | session providers |",
                  "|---|" + "---|" * (len(sizes) + 4)]
        for r in e["torch"] + e["onnxruntime"]:
            if "skipped" in r:
                lines.append(f"| {r['pipeline']} | skipped: {r['skipped'][:90]} |" + " |" * (len(sizes) + 3))
                continue
            rates = " | ".join(f"{r['examples_per_s'][b]:.1f}" for b in sizes)
            lat = r["latency_batch1"]
            mem = r.get("peak_memory_mib", r.get("device_memory_mib"))
            parity = (f"{r['max_abs_logit_vs_cpu_fp32']:.1e} / {r['label_agreement_vs_cpu_fp32']:.1%}"
                      if "max_abs_logit_vs_cpu_fp32" in r else "—")
            lines.append(f"| {r['pipeline']} | {rates} | {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} | "
                         f"{'—' if mem is None else format(mem, '.0f')} | {parity} | {', '.join(r.get('session_providers', ['torch']))} |")
        lines += ["", f"TF32 parity against the CPU: {json.dumps(e['tf32_parity'])}"]
        if "pcv_batch" in e:
            lines += [f"pcv-batch --provider {cfg['device']} end to end: {json.dumps(e['pcv_batch'])}"]
        lines.append("")
    return "\n".join(lines)


# The test fixture's 200 real reviews, found from any working directory of a checkout.
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reviews.jsonl"


def main(argv: list[str] | None = None) -> int:
    from pcv.runtime.console import show_defaults

    p = argparse.ArgumentParser(prog="python -m pcv.bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    p.add_argument("--models", default="bundled,language-perceiver", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="real reviews, cycled as needed")
    p.add_argument("--e2e-records", type=int, default=2000, help="pcv-batch end to end on this many records")
    p.add_argument("--batch-sizes", default="1,8,64,256")
    p.add_argument("--texts-per-point", type=int, default=512, help="texts run at each batch size")
    p.add_argument("--quick", action="store_true", help="a dry run in seconds: the tiny model instead of --models, batch "
                   "1 and 8 instead of --batch-sizes, 16 texts per point, 5 latency runs, at most 50 records end to end")
    a = show_defaults(p).parse_args(argv)
    cfg = GpuBenchConfig(out=a.out, device=a.device, models=tuple(a.models.split(",")), data=a.data, e2e_records=a.e2e_records,
                         batch_sizes=tuple(int(b) for b in a.batch_sizes.split(",")), texts_per_point=a.texts_per_point)
    if a.quick:
        cfg = GpuBenchConfig(out=a.out, device=a.device, models=("tiny",), batch_sizes=(1, 8), texts_per_point=16,
                             latency_runs=5, data=a.data, e2e_records=min(a.e2e_records, 50))
    try:
        result = run_gpu_bench(cfg)
    except PcvError as e:
        print(f"python -m pcv.bench.gpu: error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "gpu.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
