"""pcv-bench: latency and throughput of pcv variants on every available provider, against the
baselines (reference recipe, eager with dynamic padding, Optimum ORTModel + pipeline), all in
one process on the same texts and the same weights."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pcv.runtime.batching import BatchPlan, plan_batches
from pcv.runtime.cpu import cpu_flags
from pcv.runtime.pipeline import PipelineConfig, classify_records
from pcv.runtime.readers import ReaderConfig, Record, read_records
from pcv.runtime.session import PROVIDERS, OnnxClassifier, SessionConfig, available_providers, plan_engine, resolve_model, softmax
from pcv.runtime.tokenizer import PerceiverByteTokenizer, token_lengths

from .flops import perceiver_flops


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    model: str | None = None  # fp32 .onnx (default: the bundled model)
    hf_model: str | None = None  # HF dir for the torch baselines (default: the .onnx's dir)
    variants: tuple[str, ...] = ()  # more .onnx files to measure
    providers: tuple[str, ...] = ("cpu", "cuda", "tensorrt")
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    seq_lens: tuple[int, ...] = (256, 1024, 2048)
    data: str = "examples/reviews.jsonl"
    limit: int = 256  # texts for end to end and baselines
    batch_size: int | None = None  # pcv-batch's batch size end to end; None = its default per provider
    latency_runs: int = 30
    min_seconds: float = 1.0  # each grid point is repeated for at least this long
    threads: int | None = None
    baselines: bool = True
    engine: bool = False  # also sweep session options / concurrency end to end (fp32, first provider)
    engine_repeats: int = 1  # interleaved repeats of the sweep (best is shown, all are kept)
    repeats: int = 1  # rounds of pcv-batch end to end + baselines, interleaved: medians shown, all kept
    out: str = "bench-out"


def _timeit(fn, min_seconds: float, min_runs: int = 1) -> tuple[float, int]:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < min_runs or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n, n


def gemm_peak_gflops(n: int = 2048) -> float:
    """What this machine's BLAS reaches on a large float32 matmul: the practical fp32 peak."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = min(_timeit(lambda: a @ a, 0.0, 1)[0] for _ in range(3))
    return 2 * n**3 / best / 1e9


def int8_gemm_peak_gops(n: int = 2048, threads: int | None = None) -> float:
    """What ONNX Runtime's CPU provider reaches on a large uint8 x int8 MatMulInteger (the kernel its
    dynamic int8 models run, VNNI where the CPU has it): the practical int8 peak, in GOP/s."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    best = min(_timeit(lambda: sess.run(None, feeds), 0.0, 1)[0] for _ in range(3))
    return 2 * n**3 / best / 1e9


def machine() -> dict:
    import onnxruntime as ort

    info = {"platform": platform.platform(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "ort_providers": ort.get_available_providers()}
    try:
        import cpuinfo

        info["cpu"] = cpuinfo.get_cpu_info().get("brand_raw")
    except Exception:  # cpuinfo is optional
        info["cpu"] = platform.processor()
    import os

    info["cpu_threads"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info["cpu_flags"] = cpu_flags()
    info["fp32_gemm_gflops"] = round(gemm_peak_gflops(), 1)
    try:
        info["int8_gemm_gops"] = round(int8_gemm_peak_gops(), 1)
    except ImportError:  # onnx is in the bench extra; a runtime-only install measures fp32 only
        info["int8_gemm_gops"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


def _read_texts(path: str, limit: int) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    texts: list[str] = []
    for rec in read_records(path, ReaderConfig(label_field=None, id_field=None)):
        if rec.text is not None:
            texts.append(rec.text)
        if len(texts) >= limit:
            break
    return texts, time.perf_counter() - t0


def end_to_end(clf: OnnxClassifier, texts: list[str], batch_size: int, concurrent_runs: int = 1) -> dict:
    """pcv's pipeline over in-memory records, plus each stage timed on its own (one run at a time)."""
    records = [Record(i + 1, i + 1, t) for i, t in enumerate(texts)]
    cfg = PipelineConfig(plan=BatchPlan(batch_size=batch_size, max_tokens=batch_size * clf.info.max_length),
                         concurrent_runs=concurrent_runs)
    list(classify_records(records[:8], clf, cfg))  # warm-up, as every baseline gets one
    t0 = time.perf_counter()
    probs = [r.probs for r in classify_records(records, clf, cfg)]
    total = time.perf_counter() - t0
    labels = np.array([int(np.argmax(p)) for p in probs])
    # stages, sequentially
    tok = PerceiverByteTokenizer(model_max_length=clf.info.max_length)
    t = time.perf_counter()
    lengths = token_lengths(texts, clf.info.max_length)
    batches = plan_batches(lengths, cfg.plan)
    t_plan = time.perf_counter() - t
    t = time.perf_counter()
    encs = [tok([texts[i] for i in b], max_length=clf.info.max_length, truncation=True, padding="longest") for b in batches]
    t_tok = time.perf_counter() - t
    t = time.perf_counter()
    logits = [clf.logits(e.input_ids, e.attention_mask) for e in encs]
    t_run = time.perf_counter() - t
    t = time.perf_counter()
    for lg in logits:
        softmax(lg).argmax(1)
    t_post = time.perf_counter() - t
    n_bytes = int(sum(len(x.encode()) for x in texts))
    return {"examples_per_s": len(texts) / total, "bytes_per_s": n_bytes / total, "seconds": total, "labels": labels.tolist(),
            "stages_s": {"plan": t_plan, "tokenize": t_tok, "session_run": t_run, "post": t_post}}


def engine_sweep(path: Path, texts: list[str], batch_sizes: tuple[int, ...], provider: str, repeats: int = 1) -> list[dict]:
    """pcv's pipeline end to end under each session/concurrency setting: what to set, measured.

    With repeats > 1 the settings are interleaved (A B C, A B C, ...) so that a noisy neighbour
    hits all of them alike; every measurement is kept and the table shows the best."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    settings = {  # name -> (session config, concurrent session.run calls)
        "default: all cores per run, spinning on": (SessionConfig(provider=provider), 1),
        "spinning off": (SessionConfig(provider=provider, spinning=False), 1),
        f"1 thread per run x {cores} concurrent runs (pcv-batch's CPU default)": (SessionConfig(provider=provider, threads=1), cores),
    }
    records = [Record(i + 1, i + 1, t) for i, t in enumerate(texts)]
    clfs = {name: OnnxClassifier(path, scfg) for name, (scfg, _) in settings.items()}
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for name, (_, runs) in settings.items():
            clf = clfs[name]
            for b in batch_sizes:
                cfg = PipelineConfig(plan=BatchPlan(batch_size=b, max_tokens=b * clf.info.max_length), concurrent_runs=runs)
                list(classify_records(records[: 2 * b], clf, cfg))  # warm-up
                t0 = time.perf_counter()
                for _ in classify_records(records, clf, cfg):
                    pass
                rates.setdefault((name, b), []).append(len(texts) / (time.perf_counter() - t0))
    return [{"setting": name, "batch": b, "examples_per_s": max(v), "all_examples_per_s": v} for (name, b), v in rates.items()]


def _pcv_batch_end_to_end(path: Path, provider: str, texts: list[str], cfg: BenchConfig) -> dict:
    """End to end the way pcv-batch runs it: its engine settings for this provider."""
    _, engine = plan_engine(path, provider, batch_size=cfg.batch_size, threads=cfg.threads)
    clf = OnnxClassifier(path, SessionConfig(provider=provider, threads=engine.threads))
    e2e = end_to_end(clf, texts, engine.batch_size, engine.concurrent_runs or 1)
    e2e["engine"] = {"batch_size": engine.batch_size, "threads": engine.threads, "concurrent_runs": engine.concurrent_runs}
    return e2e


def _rate(flops: float, seconds: float) -> float | None:
    """GFLOP/s, None when the model's FLOPs are unknown (NaN: no sizes to count them from)."""
    return None if flops != flops else flops / seconds / 1e9


def grid(clf: OnnxClassifier, cfg: BenchConfig, flops_at) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for s in cfg.seq_lens:
        s = min(s, clf.info.max_length)
        for b in cfg.batch_sizes:
            ids = rng.integers(6, 262, (b, s), dtype=np.int64)
            mask = np.ones_like(ids)
            dt, n = _timeit(lambda: clf.logits(ids, mask), cfg.min_seconds)
            rows.append({"batch": b, "seq": s, "seconds_per_batch": dt, "runs": n, "examples_per_s": b / dt,
                         "bytes_per_s": b * s / dt, "gflop_per_s": _rate(b * flops_at(s), dt)})
    return rows


def latency(clf: OnnxClassifier, seq: int, runs: int) -> dict:
    rng = np.random.default_rng(1)
    out = {}
    for b in (1, 8):
        ids = rng.integers(6, 262, (b, seq), dtype=np.int64)
        mask = np.ones_like(ids)
        clf.logits(ids, mask)
        ms = []
        for _ in range(runs):
            t = time.perf_counter()
            clf.logits(ids, mask)
            ms.append(1000 * (time.perf_counter() - t))
        q = np.percentile(ms, [50, 90, 99])
        out[f"batch{b}"] = {"seq": seq, "p50_ms": q[0], "p90_ms": q[1], "p99_ms": q[2], "runs": runs}
    return out


def baselines(hf_dir: str, onnx_path: Path, texts: list[str], max_length: int) -> dict:
    """The three baselines, same texts and weights. Missing libraries are reported, not skipped silently."""
    import torch
    from pcv.export import load_classifier
    from transformers import PerceiverTokenizer

    model = load_classifier(hf_dir)
    tok = PerceiverTokenizer(model_max_length=max_length)
    res: dict = {}

    @torch.no_grad()
    def eager(batch: int, padding: str) -> tuple[float, list[int]]:
        enc = tok(texts[:batch], padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
        model(inputs=enc["input_ids"], attention_mask=enc["attention_mask"])  # warm-up
        labels: list[int] = []
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            enc = tok(texts[i : i + batch], padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
            labels += model(inputs=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1).tolist()
        return len(texts) / (time.perf_counter() - t0), labels

    speed, lab = eager(4, "max_length")
    res["reference"] = {"desc": "transformers tokenizer padding=max_length + torch eager, batch 4", "examples_per_s": speed, "labels": lab}
    speed, lab = eager(16, "longest")
    res["eager_dynamic"] = {"desc": "transformers tokenizer padding=longest + torch eager, batch 16", "examples_per_s": speed, "labels": lab}
    try:
        import shutil
        import tempfile

        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import pipeline

        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(Path(hf_dir) / "config.json", tmp)
            shutil.copy(onnx_path, Path(tmp) / "model.onnx")
            ortm = ORTModelForSequenceClassification.from_pretrained(tmp, provider="CPUExecutionProvider")
            pipe = pipeline("text-classification", model=ortm, tokenizer=tok, device=-1)
            label2id = model.config.label2id
            pipe(texts[:16], batch_size=16, truncation=True, max_length=max_length)  # warm-up
            t0 = time.perf_counter()
            out = pipe(texts, batch_size=16, truncation=True, max_length=max_length)
            speed = len(texts) / (time.perf_counter() - t0)
        res["optimum"] = {"desc": "Optimum ORTModelForSequenceClassification + transformers pipeline, batch 16, same ONNX",
                          "examples_per_s": speed, "labels": [label2id[o["label"]] for o in out]}
    except Exception as e:  # record exactly why Optimum could not run here
        res["optimum"] = {"desc": "Optimum ORTModel + pipeline", "skipped": f"{type(e).__name__}: {e}"}
    return res


def _tokenizer_speed(texts: list[str], max_length: int) -> dict:
    ours = PerceiverByteTokenizer(model_max_length=max_length)
    out = {}
    batch = texts[:64]
    t_ours, _ = _timeit(lambda: ours(batch, truncation=True, padding="longest"), 0.5)
    out["pcv_s_per_64"] = t_ours
    try:
        from transformers import PerceiverTokenizer

        ref = PerceiverTokenizer(model_max_length=max_length)
        t_ref, _ = _timeit(lambda: ref(batch, truncation=True, padding="longest", return_tensors="np"), 0.5)
        out["transformers_s_per_64"] = t_ref
        out["speedup"] = t_ref / t_ours
    except ImportError as e:
        out["transformers"] = f"skipped: {e}"
    return out


def model_architecture(onnx_path: Path, hf_dir: str | None) -> tuple[dict | None, str]:
    """The sizes FLOPs are counted from: the HF config.json, else the .onnx's pcv.architecture
    metadata (pcv-export writes it), else none (FLOPs unknown); and where they came from."""
    if hf_dir:
        return json.loads((Path(hf_dir) / "config.json").read_text()), f"{hf_dir}/config.json"
    from pcv.runtime.modelfile import scan_onnx

    arch = scan_onnx(onnx_path).metadata.get("pcv.architecture")
    if arch:
        return json.loads(arch), f"{onnx_path} (pcv.architecture)"
    return None, "unknown: no config.json and no pcv.architecture metadata (export with a newer pcv-export)"


def run_bench(cfg: BenchConfig) -> dict:
    if cfg.repeats < 1:
        raise ValueError(f"BenchConfig.repeats={cfg.repeats}: at least 1")
    fp32 = resolve_model(cfg.model)
    hf_dir = cfg.hf_model or (str(fp32.parent) if (fp32.parent / "config.json").is_file() else None)
    texts, t_read = _read_texts(cfg.data, cfg.limit)
    model_cfg, flops_from = model_architecture(fp32, hf_dir)
    flops_at = (lambda s: perceiver_flops(model_cfg, s)) if model_cfg else (lambda s: float("nan"))
    result: dict = {"machine": machine(), "config": asdict(cfg), "model": str(fp32), "texts": len(texts),
                    "read_seconds": t_read, "runs": [], "skipped": [], "flops_from": flops_from}
    if cfg.baselines and not hf_dir:
        result["skipped"].append({"model": str(fp32), "provider": "torch", "reason": "the torch baselines need the HF "
                                  "model: no config.json beside the .onnx, pass --hf-model DIR"})
    have = available_providers()
    paths = [fp32, *map(Path, cfg.variants)]
    max_length = None
    for path in paths:
        for prov in cfg.providers:
            if prov not in PROVIDERS:
                result["skipped"].append({"model": str(path), "provider": prov, "reason": "unknown provider"})
                continue
            if prov not in have:
                result["skipped"].append({"model": str(path), "provider": prov, "reason": f"not available (ORT has {have})"})
                continue
            clf = OnnxClassifier(path, SessionConfig(provider=prov, threads=cfg.threads))
            max_length = max_length or clf.info.max_length  # --model's: the baselines run it, not a variant's
            lengths = token_lengths(texts, clf.info.max_length)
            run = {"model": str(path), "variant": clf.info.variant, "provider": prov, "size_mib": path.stat().st_size / 2**20,
                   "grid": grid(clf, cfg, flops_at), "latency": latency(clf, int(np.median(lengths)), cfg.latency_runs),
                   "end_to_end": _pcv_batch_end_to_end(path, prov, texts, cfg)}
            run["end_to_end"]["gflop_per_s"] = _rate(sum(flops_at(x) for x in lengths), run["end_to_end"]["seconds"])
            result["runs"].append(run)
    if cfg.engine and result["runs"]:
        result["engine"] = engine_sweep(fp32, texts, cfg.batch_sizes, result["runs"][0]["provider"], cfg.engine_repeats)
    max_length = max_length or 2048
    result["flops_per_example_mean"] = (float(np.mean([flops_at(int(n)) for n in token_lengths(texts, max_length)]))
                                        if model_cfg else None)
    result["tokenizer"] = _tokenizer_speed(texts, max_length)
    # Rounds: every pcv-batch run end to end, then the baselines; a noisy neighbour slows a round's
    # pipelines alike, so each ratio is the median of the ratios within a round.
    rates = {i: [run["end_to_end"]["examples_per_s"]] for i, run in enumerate(result["runs"])}
    base_rounds: list[dict] = []  # one baselines() result per round that ran them
    want_baselines = cfg.baselines and hf_dir is not None
    for k in range(cfg.repeats):
        if k:  # round 0's runs were measured above, with their grid and latency
            for i, run in enumerate(result["runs"]):
                rates[i].append(_pcv_batch_end_to_end(Path(run["model"]), run["provider"], texts, cfg)["examples_per_s"])
        if want_baselines:
            try:
                base_rounds.append(baselines(hf_dir, fp32, texts, max_length))
            except ImportError as e:
                result["baselines"] = {"skipped": f"torch/transformers not installed: {e}"}
                want_baselines = False  # the pcv-batch rounds go on
    result["rounds"] = cfg.repeats
    n = len(texts)
    for i, run in enumerate(result["runs"]):
        e2e = run["end_to_end"]
        median = float(np.median(rates[i]))
        scale = median / rates[i][0]  # round 0's totals, rescaled to the median rate
        e2e.update(rounds_examples_per_s=rates[i], examples_per_s=median, seconds=n / median, bytes_per_s=e2e["bytes_per_s"] * scale)
        if e2e["gflop_per_s"] is not None:
            e2e["gflop_per_s"] *= scale
    if base_rounds:
        base = result["baselines"] = base_rounds[0]
        for key, b in base.items():
            if "examples_per_s" in b:  # None for a round where this baseline could not run
                b["rounds_examples_per_s"] = [r.get(key, {}).get("examples_per_s") for r in base_rounds]
                b["examples_per_s"] = float(np.median([x for x in b["rounds_examples_per_s"] if x is not None]))
        ref = base.get("reference", {}).get("labels")
        for i, run in enumerate(result["runs"]):
            e2e = run["end_to_end"]
            for key in ("reference", "eager_dynamic", "optimum"):
                if "examples_per_s" in base.get(key, {}):
                    pairs = [a / b for a, b in zip(rates[i], base[key]["rounds_examples_per_s"]) if b is not None]
                    e2e[f"x_vs_{key}"] = float(np.median(pairs))
            if ref is not None:
                e2e["label_agreement_vs_reference"] = float(np.mean(np.array(e2e["labels"]) == np.array(ref)))
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m.get('cpu')} ({m.get('cpu_threads')} threads, fp32 GEMM {m.get('fp32_gemm_gflops')} GFLOP/s "
             f"measured with numpy, int8 GEMM {m.get('int8_gemm_gops')} GOP/s with onnxruntime's MatMulInteger; "
             f"{', '.join(f for f in m.get('cpu_flags', []) if 'vnni' in f or 'bf16' in f) or 'no VNNI/BF16'}), "
             f"GPU: {m.get('gpu')}, onnxruntime {m['onnxruntime']}, "
             f"torch {m.get('torch')}. Texts: {result['texts']} from {result['config']['data']}; "
             + (f"mean {result['flops_per_example_mean'] / 1e9:.2f} GFLOP/example (sizes from {result.get('flops_from')})."
                if result["flops_per_example_mean"] is not None else f"FLOPs {result.get('flops_from')}."), ""]
    base = result.get("baselines", {})
    rounds = result.get("rounds", 1)
    if rounds > 1:
        lines += [f"End to end: medians of {rounds} interleaved rounds (every pipeline once per round); each ratio is "
                  "the median of its rounds' ratios.", ""]
    lines += ["| pipeline | provider | ex/s | × reference | × eager dynamic | × Optimum | GFLOP/s | agreement |", "|---|---|---|---|---|---|---|---|"]
    for key in ("reference", "eager_dynamic", "optimum"):
        b = base.get(key)
        if b and "examples_per_s" in b:
            lines.append(f"| baseline: {b['desc']} | cpu | {b['examples_per_s']:.2f} | | | | | |")
        elif b:
            lines.append(f"| baseline: {b['desc']} | — | skipped: {b['skipped'][:80]} | | | | | |")
    for r in result["runs"]:
        e = r["end_to_end"]
        f = lambda k: f"{e[k]:.2f}×" if k in e else "—"  # noqa: E731
        agree = f"{e['label_agreement_vs_reference']:.1%}" if "label_agreement_vs_reference" in e else "—"
        eng = e.get("engine", {})
        how = f"; batch {eng['batch_size']}, {eng['concurrent_runs']} run(s) x {eng['threads'] or 'all'} thread(s)" if eng else ""
        lines.append(f"| pcv-batch {r['variant']} ({Path(r['model']).name}{how}) | {r['provider']} | {e['examples_per_s']:.2f} | "
                     f"{f('x_vs_reference')} | {f('x_vs_eager_dynamic')} | {f('x_vs_optimum')} | "
                     f"{'—' if e['gflop_per_s'] is None else format(e['gflop_per_s'], '.1f')} | {agree} |")
    for s in result["skipped"]:
        lines.append(f"| {Path(s['model']).name} | {s['provider']} | skipped: {s['reason'][:60]} | | | | | |")
    lines += ["", "| variant | provider | p50 ms (b1) | p90 | p99 | p50 ms (b8) | stages: tokenize / plan / run / post (s) |",
              "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        l1, l8, st = r["latency"]["batch1"], r["latency"]["batch8"], r["end_to_end"]["stages_s"]
        lines.append(f"| {r['variant']} | {r['provider']} | {l1['p50_ms']:.1f} | {l1['p90_ms']:.1f} | {l1['p99_ms']:.1f} | {l8['p50_ms']:.1f} | "
                     f"{st['tokenize']:.3f} / {st['plan']:.4f} / {st['session_run']:.2f} / {st['post']:.4f} |")
    if result.get("engine"):
        sizes = sorted({r["batch"] for r in result["engine"]})
        reps = len(result["engine"][0].get("all_examples_per_s", [0]))
        lines += ["", f"Engine settings, end to end (fp32, ex/s, best of {reps} interleaved):", "",
                  "| setting | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for name in dict.fromkeys(r["setting"] for r in result["engine"]):
            got = {r["batch"]: r["examples_per_s"] for r in result["engine"] if r["setting"] == name}
            lines.append(f"| {name} | " + " | ".join(f"{got[b]:.2f}" for b in sizes) + " |")
    tk = result.get("tokenizer", {})
    if "speedup" in tk:
        lines += ["", f"Tokenizer, 64 real reviews: pcv {1000 * tk['pcv_s_per_64']:.2f} ms, transformers "
                  f"{1000 * tk['transformers_s_per_64']:.1f} ms ({tk['speedup']:.0f}×)."]
    return "\n".join(lines) + "\n"


def plots(result: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in result["runs"]:
        seqs = sorted({g["seq"] for g in r["grid"]})
        s = seqs[len(seqs) // 2]
        pts = [(g["batch"], g["examples_per_s"]) for g in r["grid"] if g["seq"] == s]
        ax.plot(*zip(*pts), marker="o", label=f"{r['variant']} / {r['provider']} (seq {s})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("examples / s")
    ax.set_title("session throughput vs batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "throughput.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [f"{r['variant']}\n{r['provider']}" for r in result["runs"]]
    x = np.arange(len(names))
    for k, (q, w) in enumerate((("p50_ms", -0.25), ("p90_ms", 0), ("p99_ms", 0.25))):
        ax.bar(x + w, [r["latency"]["batch1"][q] for r in result["runs"]], width=0.25, label=q.replace("_ms", ""))
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title("batch-1 latency (median review length)")
    ax.legend()
    fig.tight_layout()
    files.append(out / "latency.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def write_report(result: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "bench.md").write_text(markdown(result))
    return [out / "bench.json", out / "bench.md", *plots(result, out)]
