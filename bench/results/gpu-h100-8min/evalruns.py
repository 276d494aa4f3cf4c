"""Torch accuracy of each run's saved model on the seeded 2,500 validation reviews: the 1,000
selection sample the runs saw and the 1,500 they did not (a first read; pcv-check gives the figures)."""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from pcv.export.modeling import load_classifier
from pcv.export.train import TrainConfig, evaluate, load_labelled, split

runs, dev, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = TrainConfig(data=(".gpu/data/train.jsonl.gz",), out="-", limit=limit or None)
texts, labels = load_labelled(cfg.data, cfg)
_, va = split(len(texts), 0.1, 0)
sel = np.sort(np.random.default_rng(0).permutation(va)[:1000])
unseen = np.setdiff1d(va, sel)
for d in sorted(p for p in runs.iterdir() if (p / "model.safetensors").is_file()):
    m = load_classifier(str(d)).to(dev)
    acc = {name: evaluate(m, [texts[i] for i in idx], labels[idx], max_length=2048, device=torch.device(dev), bf16=False)
           for name, idx in (("selection", sel), ("unseen", unseen))}
    metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
    print(d.name, json.dumps({**acc, "params": sum(p.numel() for p in m.parameters()), "steps": metrics.get("steps"),
                              "best_val": metrics.get("best_val_accuracy"), "averaged": metrics.get("averaged")}))
