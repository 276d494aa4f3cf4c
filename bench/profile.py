"""Where an ONNX Perceiver's CPU time goes: ONNX Runtime's profiler, per op type and per part of the
model (the byte-side cross-attention, the latent self-attention stack, the decoder), on real texts
read one at a time as pcv-batch's CPU engine reads them (batch 1, one intra-op thread).

    python -m pcv.bench.profile m.onnx m.int8.onnx --data tests/fixtures/reviews.jsonl --limit 100
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import re
import sys
import tempfile
import time

from pcv.runtime.readers import ReaderConfig, read_records

# node-name prefixes of transformers' Perceiver as exported, and what they are
PARTS = (("/encoder/cross_attention", "cross-attention (byte side)"), ("/input_preprocessor", "byte embeddings"),
         ("/encoder/self_attends", "latent self-attention"), ("/decoder", "decoder and head"))


def _part(node: str) -> str:
    for prefix, name in PARTS:
        if prefix in node:
            return name
    return "other (fused or unnamed nodes)"


def profile(model: str, texts: list[str], threads: int = 1) -> dict:
    import onnxruntime as ort
    from pcv.runtime.tokenizer import PerceiverByteTokenizer

    with tempfile.TemporaryDirectory(prefix="pcv-profile-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "p")
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        max_length = int(sess.get_modelmeta().custom_metadata_map.get("pcv.max_length", 2048))
        tok = PerceiverByteTokenizer(model_max_length=max_length)
        t0 = time.perf_counter()
        for t in texts:
            enc = tok([t], max_length=max_length, truncation=True, padding="longest")
            sess.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
        wall = time.perf_counter() - t0
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    by_op: collections.Counter = collections.Counter()
    by_part: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            by_op[e["args"]["op_name"]] += e["dur"]
            by_part[_part(node)] += e["dur"]
            by_node[(e["args"]["op_name"], re.sub(r"self_attends\.\d+", "self_attends.N", node))] += e["dur"]
    total = sum(by_op.values()) or 1
    return {"model": model, "texts": len(texts), "threads": threads, "ms_per_text": 1000 * wall / max(1, len(texts)),
            "kernel_share": 1e-6 * total / wall if wall else None,
            "op_types": {k: v / total for k, v in by_op.most_common()},
            "parts": {k: v / total for k, v in by_part.most_common()},
            "nodes": [{"op": op, "node": n, "share": v / total} for (op, n), v in by_node.most_common(12)]}


def markdown(results: list[dict]) -> str:
    out = []
    for r in results:
        out += [f"{os.path.basename(r['model'])}: {r['ms_per_text']:.1f} ms per text ({r['texts']} texts, "
                f"{r['threads']} thread)", "", "| op type | share |", "|---|---|"]
        out += [f"| {k} | {100 * v:.1f} % |" for k, v in list(r["op_types"].items())[:10]]
        out += ["", "| part | share |", "|---|---|"] + [f"| {k} | {100 * v:.1f} % |" for k, v in r["parts"].items()]
        out += ["", "| op | node (the latent layers summed) | share |", "|---|---|---|"]
        out += [f"| {d['op']} | `{d['node']}` | {100 * d['share']:.1f} % |" for d in r["nodes"][:8]] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pcv.bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help=".onnx files (e.g. a model and its int8 variant)")
    p.add_argument("--data", default="examples/reviews.jsonl", help="texts to run (default: examples/reviews.jsonl)")
    p.add_argument("--limit", type=int, default=100, help="texts (default: 100)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1, pcv-batch's CPU engine)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    texts = list(itertools.islice((r.text for r in read_records(a.data, ReaderConfig()) if r.text is not None), a.limit))
    results = [profile(m, texts, a.threads) for m in a.models]
    print(markdown(results))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
