"""pcv-bench command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcv.runtime.console import console_script, show_defaults
from pcv.runtime.errors import PcvError


def _providers(s: str) -> tuple[str, ...]:
    names = tuple(x for x in s.split(",") if x)
    bad = [x for x in names if x not in ("cpu", "cuda", "tensorrt")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{s!r}: comma-separated providers from cpu, cuda, tensorrt")
    return names


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


@console_script("pcv-bench")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pcv-bench",
        description="Latency and throughput of pcv variants per provider, against the reference recipe, "
        "eager torch and Optimum, in one process on the same texts.",
        epilog="example: pcv-bench --variants out/m.int8.onnx --data val.jsonl --limit 400 --out bench-out\n"
        "         pcv-bench --quick   (about a minute on 2 cores)\n"
        "         pcv-bench --memory 10000,100000,1000000 --out bench-out/memory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="fp32 .onnx or dir (default: the bundled model)")
    p.add_argument("--hf-model", help="HF dir for the torch baselines (default: the model's dir)")
    p.add_argument("--variants", nargs="*", default=[], help="more .onnx files (variants of --model)")
    p.add_argument("--providers", default="cpu,cuda,tensorrt", type=_providers,
                   help="comma-separated, from cpu, cuda, tensorrt; those not available here are reported as skipped")
    p.add_argument("--batch-sizes", default="1,8,32,64")
    p.add_argument("--seq-lens", default="256,1024,2048")
    p.add_argument("--data", default="examples/reviews.jsonl", help="reviews with their real length distribution")
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--threads", type=int, help="intra-op threads per session (default: pcv-batch's per provider)")
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--batch-size", type=int, help="pcv-batch's batch size end to end (default: pcv-batch's for the provider)")
    p.add_argument("--no-baselines", action="store_true", help="skip the torch and Optimum baselines")
    p.add_argument("--engine", action="store_true", help="also sweep session settings (spinning, threads x concurrent runs) "
                   "end to end at each --batch-sizes")
    p.add_argument("--repeats", type=int, default=1,
                   help="interleaved rounds of the end-to-end runs and baselines: medians shown, ratios paired per round")
    p.add_argument("--engine-repeats", type=int, default=1, help="interleaved repeats of the --engine sweep (best shown)")
    p.add_argument("--quick", action="store_true", help="small grid and few texts: a CI smoke test")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--memory", metavar="SIZES", help="instead: peak RSS and throughput over time of pcv-batch on "
                   "files of SIZES records, e.g. 10000,100000,1000000 (tiny random model unless --model)")
    p.add_argument("--ray", metavar="ACTORS", help="instead: pcv-batch --engine ray with these actor counts (e.g. 1,2) "
                   "against the local engine on --data cycled to --limit records (pip install \"pcv[ray]\")")
    a = show_defaults(p).parse_args(argv)
    if a.repeats < 1 or a.engine_repeats < 1:
        p.error("--repeats and --engine-repeats: at least 1")
    if a.ray:
        from .cluster import ClusterBenchConfig, run_cluster_bench

        run_cluster_bench(ClusterBenchConfig(actors=_ints(a.ray), model=a.model, data=a.data, records=a.limit,
                                           repeats=max(1, a.engine_repeats), out=a.out))
        print(Path(a.out, "cluster.md").read_text())
        return 0
    if a.memory:
        from .memory import MemoryConfig, memory_markdown, run_memory

        result = run_memory(MemoryConfig(sizes=_ints(a.memory), model=a.model, data=a.data, out=a.out))
        print(memory_markdown(result))
        return 0
    from .bench import BenchConfig, run_bench, write_report

    cfg = BenchConfig(model=a.model, hf_model=a.hf_model, variants=tuple(a.variants), providers=a.providers,
                      batch_sizes=_ints(a.batch_sizes), seq_lens=_ints(a.seq_lens), data=a.data, limit=a.limit,
                      threads=a.threads, latency_runs=a.latency_runs, batch_size=a.batch_size, baselines=not a.no_baselines,
                      engine=a.engine, engine_repeats=a.engine_repeats, repeats=a.repeats, out=a.out)
    if a.quick:
        from dataclasses import replace

        cfg = replace(cfg, batch_sizes=(1, 8), seq_lens=(128, 512), limit=min(cfg.limit, 24), latency_runs=5, min_seconds=0.2)
    try:
        result = run_bench(cfg)
    except PcvError as e:
        print(f"pcv-bench: error: {e}", file=sys.stderr)
        return 2
    files = write_report(result, Path(cfg.out))
    print(Path(cfg.out, "bench.md").read_text())
    print("wrote " + ", ".join(map(str, files)), file=sys.stderr)
    return 0
