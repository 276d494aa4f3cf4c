"""pcv-bench quick mode writes well-formed reports with the baselines present (no timing asserts)."""

from __future__ import annotations

import json

import pytest
from pcv.bench.cli import main
from pcv.bench.flops import perceiver_flops


def test_quick_bench_report(tmp_path, tiny_dir, reviews):
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in reviews[:12]))
    out = tmp_path / "bench"
    rc = main(["--quick", "--engine", "--model", str(tiny_dir / "model.onnx"), "--data", str(data), "--out", str(out),
               "--providers", "cpu,cuda"])
    assert rc == 0
    res = json.loads((out / "bench.json").read_text())
    assert {"reference", "eager_dynamic", "optimum"} <= set(res["baselines"])
    assert res["baselines"]["reference"]["examples_per_s"] > 0
    run = res["runs"][0]
    assert run["provider"] == "cpu" and run["variant"] == "fp32"
    assert {"x_vs_reference", "x_vs_eager_dynamic"} <= set(run["end_to_end"])
    assert run["end_to_end"]["label_agreement_vs_reference"] == 1.0  # same weights, same answers
    assert set(run["end_to_end"]["stages_s"]) == {"plan", "tokenize", "session_run", "post"}
    assert {"p50_ms", "p90_ms", "p99_ms"} <= set(run["latency"]["batch1"])
    assert [g["batch"] for g in run["grid"]] == [1, 8, 1, 8]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert any(s["provider"] == "cuda" and "not available" in s["reason"] for s in res["skipped"])
    md = (out / "bench.md").read_text()
    assert "baseline: transformers tokenizer padding=max_length" in md and "pcv-batch fp32" in md
    assert {(r["setting"].split(":")[0], r["batch"]) for r in res["engine"]} >= {("default", 1), ("default", 8), ("spinning off", 8)}
    assert "Engine settings" in md and res["machine"]["fp32_gemm_gflops"] > 0 and res["machine"]["int8_gemm_gops"] > 0
    assert isinstance(res["machine"]["cpu_flags"], list) and "int8 GEMM" in md
    assert (out / "throughput.png").stat().st_size > 1000 and (out / "latency.png").stat().st_size > 1000


def test_flops_of_language_perceiver_architecture():
    from transformers import PerceiverConfig

    cfg = PerceiverConfig(qk_channels=256, v_channels=1280).to_dict()
    # the released language-perceiver: about 100 GFLOP per example at 2,048 bytes, growing with length via the cross-attention
    assert 90e9 < perceiver_flops(cfg, 2048) < 130e9
    assert perceiver_flops(cfg, 512) < perceiver_flops(cfg, 2048)


def test_memory_mode_runs_pcv_batch_and_reports_rss(tmp_path, tiny_dir):
    from pcv.bench.memory import MemoryConfig, run_memory

    result = run_memory(MemoryConfig(sizes=(300,), model=str(tiny_dir / "model.onnx"), out=str(tmp_path)))
    floor, run = result["runs"]
    assert (floor["records"], run["records"]) == (1, 300)
    assert 10 < floor["peak_rss_mib"] < 4096 and run["peak_rss_mib"] >= floor["peak_rss_mib"] * 0.9
    assert run["records_per_s"] > 0 and run["records_per_s_by_tenth"]
    assert json.loads((tmp_path / "memory.json").read_text())["runs"] == result["runs"]
    assert (tmp_path / "memory.md").read_text().count("\n") == 4


def test_baselines_run_at_the_models_length_not_a_shorter_variants(tmp_path, tiny_dir, reviews):
    # --variants may be another model with fewer positions (comparing two bundled models): the
    # baselines and the per-example figures are --model's, at its max_length (256), not 64.
    from conftest import tiny_model
    from pcv.export.onnx_export import ExportConfig, export_onnx

    short = tmp_path / "short.onnx"
    export_onnx(tiny_model(max_length=64, seed=1), short, ExportConfig(verify=False))
    texts = [r["text"] for r in reviews[:12]]
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "bench"
    assert main(["--quick", "--model", str(tiny_dir / "model.onnx"), "--variants", str(short), "--data", str(data),
                 "--out", str(out), "--providers", "cpu"]) == 0
    res = json.loads((out / "bench.json").read_text())
    cfg = json.loads((tiny_dir / "config.json").read_text())
    want = sum(perceiver_flops(cfg, min(len(t.encode()) + 2, 256)) for t in texts) / len(texts)
    assert abs(res["flops_per_example_mean"] - want) < 1e-6 * want
    assert res["runs"][0]["end_to_end"]["label_agreement_vs_reference"] == 1.0


def test_profile_splits_the_time_by_op_type_and_part(tiny_dir, review_texts):
    from pcv.bench.profile import markdown, profile

    res = profile(str(tiny_dir / "model.onnx"), review_texts[:3])
    assert abs(sum(res["op_types"].values()) - 1) < 1e-6 and abs(sum(res["parts"].values()) - 1) < 1e-6
    assert "cross-attention (byte side)" in res["parts"] and res["ms_per_text"] > 0
    assert "| op type | share |" in markdown([res])


def test_bench_counts_flops_of_an_onnx_without_its_hf_dir(tmp_path, tiny_dir, reviews):
    import shutil

    import onnx

    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in reviews[:6]))
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tiny_dir / "model.onnx", alone / "model.onnx")  # no config.json beside it
    cfg = json.loads((tiny_dir / "config.json").read_text())
    args = ["--quick", "--model", str(alone / "model.onnx"), "--data", str(data), "--providers", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    res = json.loads((tmp_path / "a" / "bench.json").read_text())
    assert "pcv.architecture" in res["flops_from"]
    assert res["flops_per_example_mean"] > 0 and res["runs"][0]["end_to_end"]["gflop_per_s"] > 0
    assert perceiver_flops(cfg, 100) == perceiver_flops(json.loads(
        {p.key: p.value for p in onnx.load(str(alone / "model.onnx")).metadata_props}["pcv.architecture"]), 100)
    assert any(s["provider"] == "torch" and "--hf-model" in s["reason"] for s in res["skipped"])
    # a model without the metadata: FLOPs unknown, said so, and the JSON stays strict (no NaN)
    proto = onnx.load(str(alone / "model.onnx"))
    keep = [p for p in proto.metadata_props if p.key != "pcv.architecture"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(alone / "model.onnx"))
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    text = (tmp_path / "b" / "bench.json").read_text()
    res = json.loads(text, parse_constant=lambda c: pytest.fail(f"bench.json holds {c}"))
    assert res["flops_per_example_mean"] is None and res["runs"][0]["end_to_end"]["gflop_per_s"] is None
    assert "FLOPs unknown" in (tmp_path / "b" / "bench.md").read_text()


def _quick_repeats(tmp_path, tiny_dir, reviews, repeats: int) -> tuple[dict, str]:
    """pcv-bench --quick --repeats on the CPU over 8 reviews: (bench.json, bench.md)."""
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in reviews[:8]))
    out = tmp_path / "bench"
    assert main(["--quick", "--repeats", str(repeats), "--model", str(tiny_dir / "model.onnx"), "--data", str(data),
                 "--out", str(out), "--providers", "cpu"]) == 0
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_repeats_pair_each_ratio_within_its_round(tmp_path, tiny_dir, reviews):
    res, md = _quick_repeats(tmp_path, tiny_dir, reviews, 3)
    e2e, ref = res["runs"][0]["end_to_end"], res["baselines"]["reference"]
    assert len(e2e["rounds_examples_per_s"]) == len(ref["rounds_examples_per_s"]) == 3
    assert e2e["examples_per_s"] == sorted(e2e["rounds_examples_per_s"])[1]
    pairs = sorted(a / b for a, b in zip(e2e["rounds_examples_per_s"], ref["rounds_examples_per_s"]))
    assert e2e["x_vs_reference"] == pytest.approx(pairs[1])
    assert "medians of 3 interleaved rounds" in md


def test_repeats_go_on_without_the_torch_baselines(tmp_path, tiny_dir, reviews, monkeypatch):
    import pcv.bench.bench as bench

    def missing(*args, **kwargs):
        raise ImportError("no torch here")

    monkeypatch.setattr(bench, "baselines", missing)
    res, _ = _quick_repeats(tmp_path, tiny_dir, reviews, 2)
    assert "not installed" in res["baselines"]["skipped"]
    e2e = res["runs"][0]["end_to_end"]
    assert len(e2e["rounds_examples_per_s"]) == 2 and e2e["seconds"] == pytest.approx(len(reviews[:8]) / e2e["examples_per_s"])
    with pytest.raises(SystemExit):
        main(["--repeats", "0"])


def test_gpu_bench_dry_run_on_the_cpu(tmp_path, reviews):
    """python -m pcv.bench.gpu runs every step a CPU can and says what it skipped (no timing asserts)."""
    from pcv.bench.gpu import main as gpu_main

    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in reviews[:20]))
    assert gpu_main(["--out", str(tmp_path / "g"), "--device", "cpu", "--quick", "--data", str(data)]) == 0
    res = json.loads((tmp_path / "g" / "gpu.json").read_text())
    tiny = res["models"]["tiny"]
    ort_rows = {r["pipeline"]: r for r in tiny["onnxruntime"]}
    assert len(ort_rows) == 6 and not any("skipped" in r for r in ort_rows.values())  # 3 variants x IO binding on/off
    assert all(r["session_providers"][0] == "CPUExecutionProvider" and r["label_agreement_vs_cpu_fp32"] == 1.0
               for r in ort_rows.values())
    assert [r["pipeline"] for r in tiny["torch"]] == ["torch eager fp32", "torch eager fp16"]
    assert "skipped" in tiny["torch"][1] and "skipped" in tiny["tf32_parity"]
    assert tiny["pcv_batch"]["exit"] == 0 and "provider cpu" in tiny["pcv_batch"]["first_stderr_line"]
    assert "torch" in res["machine"] and "onnxruntime cpu optimized-fp16" in (tmp_path / "g" / "gpu.md").read_text()
    assert gpu_main(["--out", str(tmp_path / "h"), "--device", "tensorrt"]) == 2
