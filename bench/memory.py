"""Peak resident memory and throughput over time of pcv-batch on 10k / 100k / 1M-record files.

Each size runs the real `pcv-batch` in a child process (so its peak RSS is its own: VmHWM on
Linux, else wait4's ru_maxrss) while this process samples the output file's growth to get throughput per tenth of the
run. A 1-record run gives the floor (interpreter + onnxruntime + model). To finish 1M records in
minutes on 2 cores the default model is a tiny random Perceiver: what is measured is the
pipeline's memory (reader, planner, queues, writer, resume state), which is what grows with the
file; the model's share is constant and shows in the floor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pcv.runtime.errors import PcvError

from .bench import machine


@dataclass(frozen=True, kw_only=True)
class MemoryConfig:
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    model: str | None = None  # .onnx; None = a tiny random Perceiver built here
    data: str = "examples/reviews.jsonl"  # texts cycled to fill the files
    text_chars: int = 200  # each record's text is cut to this many characters
    out: str = "bench-out/memory"
    batch_args: tuple[str, ...] = ()  # extra pcv-batch options


def _tiny_model(folder: Path) -> Path:
    from pcv.export import ExportConfig, ModelSize, build_config, export_onnx
    from transformers import PerceiverForSequenceClassification

    size = ModelSize(num_latents=16, d_latents=32, d_model=32, num_layers=1, self_heads=2, cross_heads=2, max_length=256)
    path = folder / "tiny.onnx"
    export_onnx(PerceiverForSequenceClassification(build_config(size)).eval(), path, ExportConfig())
    return path


def _write_input(path: Path, n: int, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n")


# pcv-batch, then its own peak RSS. Not wait4's ru_maxrss: Linux carries the high-water mark of
# the pre-exec image (this process, torch and all) over exec. VmHWM belongs to the new image.
_CHILD = """
import sys
from pcv.runtime.cli import main
rc = main(sys.argv[1:])
try:
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    print("PCV_VMHWM_KIB", kib, file=sys.stderr)
except OSError:
    pass
sys.exit(rc)
"""


def _run_one(model: Path, src: Path, out: Path, n: int, extra: tuple[str, ...]) -> dict:
    cmd = [sys.executable, "-c", _CHILD, str(src), "-o", str(out), "--model", str(model), "-q",
           "--provider", "cpu", *extra]
    err_path = out.with_name(out.name + ".stderr")
    err_file = open(err_path, "wb")  # a file, not a pipe: a chatty child cannot block on a full pipe
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=err_file)
    samples: list[tuple[float, int]] = []  # (seconds, output lines so far)
    lines, pos = 0, 0
    while True:
        waited = os.wait4(proc.pid, os.WNOHANG)
        if waited[0] == proc.pid:
            status, usage = waited[1], waited[2]
            break
        time.sleep(0.25)
        # pcv-batch stages its output beside OUT (OUT.pcv-XXXXXXXX.part) until the job is done
        staged = next(iter(out.parent.glob(out.name + ".pcv-*.part")), None)
        if staged is not None:
            try:
                with open(staged, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:  # renamed into place between the glob and the open
                continue
            pos += len(chunk)
            lines += chunk.count(b"\n")
            samples.append((time.perf_counter() - t0, lines))
    wall = time.perf_counter() - t0
    err_file.close()
    stderr = err_path.read_text(errors="replace")
    err_path.unlink()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4 above; tell Popen
    if proc.returncode != 0:
        raise PcvError(f"pcv-batch exited {proc.returncode} on {n} records: {stderr[-500:]}")
    with open(out, "rb") as f:
        done = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(2**20), b""))
    if done != n:
        raise PcvError(f"pcv-batch wrote {done} predictions for {n} records")
    # throughput in each tenth of the records (from the output samples); flat means no degradation
    tenths = []
    marks = [n * k // 10 for k in range(1, 11)]
    prev_t, prev_n = 0.0, 0
    for m in marks:
        hit = next(((t, c) for t, c in samples if c >= m), (wall, n))
        if hit[0] > prev_t and hit[1] > prev_n:
            tenths.append(round((hit[1] - prev_n) / (hit[0] - prev_t), 1))
            prev_t, prev_n = hit
    hwm = [line.split()[1] for line in stderr.splitlines() if line.startswith("PCV_VMHWM_KIB ")]
    peak_kib = int(hwm[-1]) if hwm else usage.ru_maxrss
    return {"records": n, "peak_rss_mib": round(peak_kib / 1024, 1), "seconds": round(wall, 2),
            "records_per_s": round(n / wall, 1), "records_per_s_by_tenth": tenths}


def run_memory(cfg: MemoryConfig) -> dict:
    from .bench import _read_texts

    texts = [t[: cfg.text_chars] for t in _read_texts(cfg.data, 10_000)[0]]
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pcv-mem-") as tmp:
        tmp_path = Path(tmp)
        model = Path(cfg.model) if cfg.model else _tiny_model(tmp_path)
        for n in (1, *cfg.sizes):
            src, out = tmp_path / f"in-{n}.jsonl", tmp_path / f"out-{n}.jsonl"
            _write_input(src, n, texts)
            row = _run_one(model, src, out, n, cfg.batch_args)
            print(f"pcv-bench memory: {n:>9,} records  peak RSS {row['peak_rss_mib']:7.1f} MiB  "
                  f"{row['records_per_s']:9.1f} rec/s", file=sys.stderr)
            rows.append(row)
            src.unlink()
            out.unlink()
    result = {"config": {**asdict(cfg), "model": cfg.model or "tiny random Perceiver (16 latents x 32, 1 layer)"},
              "machine": machine(), "runs": rows}
    (out_dir / "memory.json").write_text(json.dumps(result, indent=2))
    (out_dir / "memory.md").write_text(memory_markdown(result))
    return result


def memory_markdown(result: dict) -> str:
    lines = ["| records | peak RSS (MiB) | wall (s) | records/s | records/s per tenth of the run |",
             "|---:|---:|---:|---:|---|"]
    for r in result["runs"]:
        tenths = ", ".join(f"{x:,.0f}" for x in r["records_per_s_by_tenth"]) or "-"
        lines.append(f"| {r['records']:,} | {r['peak_rss_mib']:.1f} | {r['seconds']:.1f} | {r['records_per_s']:,.0f} | {tenths} |")
    return "\n".join(lines) + "\n"
