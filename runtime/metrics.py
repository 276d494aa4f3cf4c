"""Per-class evaluation a user can act on: precision, recall, F1, support and the confusion matrix
(what scikit-learn's classification_report and confusion_matrix give; the tests hold them equal)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def confusion(gold: npt.NDArray[np.int64], pred: npt.NDArray[np.int64], n_labels: int) -> npt.NDArray[np.int64]:
    """(C, C) counts: row = the true label, column = the predicted one."""
    m = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(m, (np.asarray(gold, np.int64), np.asarray(pred, np.int64)), 1)
    return m


def report(matrix: npt.NDArray[np.int64] | list, labels: Sequence[str]) -> dict[str, Any]:
    """`{"accuracy", "labels", "per_class": {label: {"precision", "recall", "f1", "support"}}, "macro_f1",
    "confusion"}` from a confusion matrix; a class never predicted (or never present) scores 0, not NaN."""
    m = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(m).astype(np.float64)
    support, predicted = m.sum(1), m.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    n = int(m.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "n": n,
        "labels": list(labels),
        "per_class": {name: {"precision": round(float(p), 6), "recall": round(float(r), 6), "f1": round(float(f), 6),
                             "support": int(s)} for name, p, r, f, s in zip(labels, precision, recall, f1, support)},
        "macro_f1": round(float(f1.mean()), 6) if len(labels) else 0.0,
        "confusion": m.tolist(),
    }


def format_report(rep: dict[str, Any]) -> str:
    """The report as a small table, and the confusion matrix (rows: true label; columns: predicted)."""
    names = rep["labels"]
    w = max([5, *(len(n) for n in names)])
    lines = [f"{'label':<{w}}  precision  recall      f1  support"]
    for name in names:
        c = rep["per_class"][name]
        lines.append(f"{name:<{w}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7,}")
    lines.append(f"{'':<{w}}  accuracy {rep['accuracy']:.4f} of {rep['n']:,}, macro F1 {rep['macro_f1']:.4f}")
    cw = max([6, *(len(n) for n in names)])
    lines.append(f"confusion (rows: true, columns: predicted)\n{'':<{w}}  " + "  ".join(f"{n:>{cw}}" for n in names))
    for name, row in zip(names, rep["confusion"]):
        lines.append(f"{name:<{w}}  " + "  ".join(f"{v:>{cw},}" for v in row))
    return "\n".join(lines)


def write_report(rep: dict[str, Any], path: str) -> None:
    """JSON beside nothing else: written to a temporary name and renamed, so a reader never sees half of it."""
    import os

    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(rep, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
