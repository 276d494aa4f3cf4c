"""pcv-check: accuracy parity of ONNX variants against the torch model on labelled text."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from pcv.runtime.batching import BatchPlan
from pcv.runtime.metrics import confusion, report
from pcv.runtime.pipeline import Batch, plan_and_tokenize
from pcv.runtime.readers import read_labelled
from pcv.runtime.session import OnnxClassifier, SessionConfig


@dataclass(frozen=True)
class Tolerance:
    min_agreement: float | None = None  # fraction of labels equal to torch's
    max_abs_logit: float | None = None  # max |Δlogit|
    max_acc_drop: float | None = None  # accuracy points (percent) away from torch, either way


# Tolerances by variant kind (pcv-check fails a variant outside them); overridable from the CLI.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(min_agreement=1.0, max_abs_logit=1e-4),
    "optimized": Tolerance(min_agreement=1.0, max_abs_logit=1e-4),
    "fp16": Tolerance(max_abs_logit=1e-2, max_acc_drop=0.1),
    "int8": Tolerance(max_acc_drop=0.5),
    "int8-static": Tolerance(max_acc_drop=0.5),
    "tensorrt": Tolerance(min_agreement=1.0, max_abs_logit=1e-4),
}


@dataclass
class Row:
    name: str
    variant: str
    accuracy: float
    acc_delta: float  # points vs torch
    agreement: float
    max_abs_logit: float
    mean_abs_logit: float
    examples_per_s: float
    size_mib: float
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    per_class: dict = field(default_factory=dict)  # label -> precision, recall, f1, support (runtime.metrics)


def labelled_texts(model, data: str, *, text_field: str, label_field: str, limit: int | None
                   ) -> tuple[list[str], npt.NDArray[np.int64]]:
    """The texts of a labelled file and their labels as the model's ids (names from its id2label)."""
    names = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    texts, labels, _ = read_labelled((data,), names=names, text_field=text_field, label_field=label_field, limit=limit)
    return texts, labels


def _batches(texts: list[str], max_length: int, batch_size: int) -> list[Batch]:
    plan = BatchPlan(batch_size=batch_size, max_tokens=batch_size * max_length)
    return plan_and_tokenize(texts, max_length=max_length, plan=plan)


@torch.no_grad()
def torch_logits(model, texts: list[str], *, max_length: int, batch_size: int) -> tuple[npt.NDArray[np.float32], float]:
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    t0 = time.perf_counter()
    for idx, ids, mask in _batches(texts, max_length, batch_size):
        out[idx] = model(inputs=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    return out, len(texts) / (time.perf_counter() - t0)


def onnx_logits(path: Path, texts: list[str], *, max_length: int, batch_size: int, provider: str) -> tuple[npt.NDArray[np.float32], float, str]:
    clf = OnnxClassifier(path, SessionConfig(provider=provider))
    out = np.zeros((len(texts), len(clf.info.id2label)), dtype=np.float32)
    t0 = time.perf_counter()
    for idx, ids, mask in _batches(texts, max_length, batch_size):
        out[idx] = clf.logits(ids, mask)
    return out, len(texts) / (time.perf_counter() - t0), clf.info.variant


def compare(name: str, variant: str, logits: np.ndarray, ref: np.ndarray, labels: np.ndarray, speed: float, size: float,
            tol: Tolerance, names: tuple[str, ...] = ()) -> Row:
    acc = float((logits.argmax(1) == labels).mean())
    ref_acc = float((ref.argmax(1) == labels).mean())
    diff = np.abs(logits - ref)
    row = Row(name, variant, acc, 100 * (acc - ref_acc), float((logits.argmax(1) == ref.argmax(1)).mean()),
              float(diff.max()), float(diff.mean()), speed, size)
    if names:
        row.per_class = report(confusion(labels, logits.argmax(1), len(names)), names)["per_class"]
    if tol.min_agreement is not None and row.agreement < tol.min_agreement:
        row.failures.append(f"agreement {row.agreement:.2%} < {tol.min_agreement:.2%}")
    if tol.max_abs_logit is not None and row.max_abs_logit > tol.max_abs_logit:
        row.failures.append(f"max |Δlogit| {row.max_abs_logit:.2e} > {tol.max_abs_logit:g}")
    # "within" is both ways: a variant that gains accuracy also stopped giving the model's answers
    if tol.max_acc_drop is not None and abs(row.acc_delta) > tol.max_acc_drop + 1e-9:
        row.failures.append(f"accuracy {row.acc_delta:+.2f} pt, allowed ±{tol.max_acc_drop:g} pt")
    row.passed = not row.failures
    return row


def format_table(rows: list[Row], n: int) -> str:
    head = f"{'model':32s} {'variant':11s} {'acc':>7s} {'Δacc pt':>8s} {'agree':>7s} {'max|Δ|':>9s} {'mean|Δ|':>9s} {'ex/s':>7s} {'MiB':>6s}  result"
    lines = [f"{n} labelled texts", head]
    for r in rows:
        verdict = "ref" if r.variant == "torch" else ("ok" if r.passed else "FAIL: " + "; ".join(r.failures))
        lines.append(f"{r.name[-32:]:32s} {r.variant:11s} {r.accuracy:7.2%} {r.acc_delta:+8.2f} {r.agreement:7.2%} "
                     f"{r.max_abs_logit:9.2e} {r.mean_abs_logit:9.2e} {r.examples_per_s:7.1f} {r.size_mib:6.1f}  {verdict}")
    if any(r.per_class for r in rows):  # per-class F1 (precision / recall), a row per model
        names = list(next(r.per_class for r in rows if r.per_class))
        lines += ["", f"{'per-class F1 (precision/recall)':44s} " + " ".join(f"{n[:22]:>22s}" for n in names)]
        for r in rows:
            cells = [f"{c['f1']:.4f} ({c['precision']:.3f}/{c['recall']:.3f})" for c in (r.per_class[n] for n in names)]
            lines.append(f"{(r.name[-32:] + ' ' + r.variant):44s} " + " ".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


def rows_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
