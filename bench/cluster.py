"""pcv-batch --engine ray against the local engine, on the same machine and file (pcv-bench --ray 1,2).

Each configuration runs the real `pcv-batch` in a child process, interleaved `repeats` times: the
local engine (its defaults), then --engine ray with each actor count, every Ray run starting its
own local Ray instance as a user's first run does. Reported per run: the whole command's wall
time and records/s (Ray's start-up, the driver's read of the inputs and the actors' start
included), and for Ray the workers' steady rate: records over the actors' mean busy time (the
shards' seconds from the manifest, summed, over the actor count), the rate a long job approaches.
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
class ClusterBenchConfig:
    actors: tuple[int, ...] = (1, 2)
    model: str | None = None
    data: str = "examples/reviews.jsonl"  # records cycled to `records`
    records: int = 2000
    repeats: int = 2
    out: str = "bench-out/cluster"


def _input(cfg: ClusterBenchConfig, folder: Path) -> Path:
    lines = [ln for ln in Path(cfg.data).read_text(encoding="utf-8").splitlines() if ln.strip()]
    src = folder / "in.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(cfg.records):
            rec = json.loads(lines[i % len(lines)])
            f.write(json.dumps({"id": f"b{i}", "text": rec["text"]}) + "\n")
    return src


def _run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise PcvError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-1500:]}")
    return dt, r.stderr


def run_cluster_bench(cfg: ClusterBenchConfig) -> dict:
    exe = str(Path(sys.executable).parent / "pcv-batch")
    model = ["--model", cfg.model] if cfg.model else []
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pcv-bench-ray-") as tmp:
        src = _input(cfg, Path(tmp))
        for rep in range(cfg.repeats):
            dt, _ = _run([exe, str(src), "-o", f"{tmp}/local-{rep}.jsonl", "-q", *model])
            runs.append({"engine": "local", "repeat": rep, "seconds": round(dt, 2), "records_per_s": round(cfg.records / dt, 1)})
            for n in cfg.actors:
                out = f"{tmp}/ray-{n}-{rep}"
                dt, _ = _run([exe, str(src), "-o", out, "--engine", "ray", "--actors", str(n), "-q", *model])
                manifest = json.loads(Path(out, "manifest.json").read_text())
                per_actor = sum(part["seconds"] for part in manifest["parts"].values()) / n
                runs.append({"engine": f"ray x{n}", "repeat": rep, "seconds": round(dt, 2),
                             "records_per_s": round(cfg.records / dt, 1), "shards": len(manifest["shards"]),
                             "steady_records_per_s": round(cfg.records / per_actor, 1) if per_actor else None})
    result = {"config": asdict(cfg), "machine": machine(), "runs": runs}
    os.makedirs(cfg.out, exist_ok=True)
    Path(cfg.out, "cluster.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(cfg.out, "cluster.md").write_text(cluster_markdown(result))
    return result


def cluster_markdown(result: dict) -> str:
    rows = result["runs"]
    best: dict[str, dict] = {}
    for r in rows:
        if r["engine"] not in best or r["seconds"] < best[r["engine"]]["seconds"]:
            best[r["engine"]] = r
    local = best["local"]["records_per_s"]
    out = [f"{result['config']['records']:,} records, best of {result['config']['repeats']} interleaved runs; "
           f"{result['machine'].get('cpu')}, {result['machine'].get('cpu_threads')} threads", "",
           "| engine | whole command s | records/s | vs local | workers' steady records/s |", "|---|---|---|---|---|"]
    for name, r in best.items():
        steady = r.get("steady_records_per_s")
        out.append(f"| {name} | {r['seconds']} | {r['records_per_s']} | {r['records_per_s'] / local:.2f}x | "
                   f"{steady if steady is not None else '-'} |")
    return "\n".join(out) + "\n"
