"""Export a Perceiver classifier to ONNX (dynamic batch and seq), with metadata, and verify it.

The ONNX contract (what pcv.runtime relies on):
  inputs  input_ids int64 (batch, seq), attention_mask int64 (batch, seq)
  output  logits float32 (batch, num_labels)
  metadata_props: pcv.id2label, pcv.max_length, pcv.tokenizer, pcv.variant, pcv.source_sha256,
                  pcv.version, pcv.opset
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
import torch
from pcv.runtime.errors import ModelError, PcvError
from pcv.runtime.modelfile import DIGEST_KEY, graph_digest
from pcv.runtime.tokenizer import PerceiverByteTokenizer

from .modeling import weights_hash

OPSET = 17  # LayerNormalization is a single op from 17; every ORT since 1.14 runs it
TWO_GB = 2**31


def pcv_version() -> str:
    try:
        return version("pcv")
    except PackageNotFoundError:
        return "0+unknown"


class _Logits(torch.nn.Module):
    """(input_ids, attention_mask) -> logits: the graph's whole interface.

    PerceiverForSequenceClassification's forward with the key-padding bias built here, as transformers
    4.x builds it ((1 - mask) * dtype min, shape (B, 1, 1, L)), whatever version is installed: 5.x
    builds a (B, 1, latents, L) mask through its generic masking code (Flatten, Gather, Range, And,
    Where, Expand), which costs a pass over that map per run and hides the cross-attention from the
    fusion pass (fusion.py). verify_onnx checks the graph against the model's own forward.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        p = self.model.perceiver
        inputs, modality_sizes, inputs_without_pos = p.input_preprocessor(input_ids)
        latents = p.embeddings(batch_size=inputs.shape[0])
        bias = (1.0 - attention_mask[:, None, None, :].to(latents.dtype)) * torch.finfo(latents.dtype).min
        z = p.encoder(latents, inputs=inputs, inputs_mask=bias)[0]
        query = p.decoder.decoder_query(inputs, modality_sizes, inputs_without_pos)
        logits = p.decoder(query, z=z).logits  # (B, C)
        if hasattr(self.model, "ngram"):  # the byte n-gram head (ngrams.py) reads the same inputs
            logits = logits + self.model.ngram(input_ids, attention_mask)
        return logits


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    opset: int = OPSET
    max_length: int | None = None  # None = the model's max_position_embeddings
    variant: str = "fp32"
    verify: bool = True
    # max |Δlogit| allowed between torch and ONNX, relative to the logits' size: |Δ| <= tolerance * max(1, max |logit|)
    # (float32 kernels that sum in another order differ by a few ulps of the largest value)
    tolerance: float = 1e-4
    verify_texts: tuple[str, ...] = ()  # real text for verification (plus random bytes)


@dataclass
class VerifyReport:
    cases: list[dict] = field(default_factory=list)
    max_abs_diff: float = 0.0
    max_scaled_diff: float = 0.0  # max |Δlogit| / max(1, max |logit|) over the cases
    agreement: float = 1.0

    def ok(self, tolerance: float) -> bool:
        return self.max_scaled_diff <= tolerance and self.agreement == 1.0

    def format(self) -> str:
        lines = [f"{'batch':>5} {'seq':>5} {'source':>7} {'max|Δlogit|':>12} {'max|logit|':>11} {'agree':>6}"]
        for c in self.cases:
            lines.append(f"{c['batch']:>5} {c['seq']:>5} {c['source']:>7} {c['max_abs_diff']:>12.2e} "
                         f"{c['max_abs_logit']:>11.2f} {c['agreement']:>6.0%}")
        lines.append(f"overall: max |Δlogit| {self.max_abs_diff:.2e} ({self.max_scaled_diff:.2e} of max(1, |logit|)), "
                     f"label agreement {self.agreement:.1%}")
        return "\n".join(lines)


ARCHITECTURE_KEY = "pcv.architecture"  # the config fields that size the graph (pcv-bench counts FLOPs from them)
ARCHITECTURE_FIELDS = ("num_latents", "d_latents", "d_model", "num_blocks", "num_self_attends_per_block",
                       "num_self_attention_heads", "num_cross_attention_heads", "qk_channels", "v_channels",
                       "cross_attention_shape_for_attention", "cross_attention_widening_factor",
                       "self_attention_widening_factor", "max_position_embeddings", "vocab_size", "num_labels")


def architecture(config) -> dict:
    """The sizes of a Perceiver config, as plain JSON values."""
    d = config.to_dict()
    extra = {"pcv_ngram": d["pcv_ngram"]} if d.get("pcv_ngram") else {}  # the byte n-gram head, when there is one
    return {k: d[k] for k in ARCHITECTURE_FIELDS if k in d} | {"num_labels": config.num_labels} | extra


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in meta.items():
        if k in existing:
            existing[k].value = v
        else:
            proto.metadata_props.add(key=k, value=v)


def save_onnx(proto: onnx.ModelProto, out: Path) -> None:
    """Save, using the external-data format when the weights pass what protobuf can hold, and
    record the digest of graph + weights (pcv.graph_sha256) that pcv-batch checks on load."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if proto.ByteSize() >= TWO_GB - 2**26:
        # Moves the weights out of `proto` into OUT.data; proto keeps only the references.
        onnx.save_model(proto, out, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=out.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, out)
    digest = graph_digest(out)
    set_metadata(proto, {DIGEST_KEY: digest})  # metadata sits outside the digested graph
    out.write_bytes(proto.SerializeToString())
    if graph_digest(out) != digest:
        raise PcvError(f"{out}: the saved graph does not read back with the digest just computed")


def export_onnx(model: torch.nn.Module, out: str | Path, cfg: ExportConfig = ExportConfig()) -> VerifyReport | None:
    """Export `model` to `out` and (by default) verify it against torch; raises PcvError on failure.

    >>> report = export_onnx(load_classifier("models/imdb-perceiver"), "model.onnx")  # doctest: +SKIP
    """
    out = Path(out)
    model = model.float().eval()
    wrapper = _Logits(model).eval()  # the TorchScript exporter restores training mode: keep both in eval
    max_length = cfg.max_length or int(model.config.max_position_embeddings)
    if max_length > model.config.max_position_embeddings:
        raise PcvError(f"max_length {max_length} exceeds the model's {model.config.max_position_embeddings} positions")
    ids = torch.full((2, 16), 10, dtype=torch.long)
    mask = torch.ones_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (ids, mask), str(raw), dynamo=False, opset_version=cfg.opset,
                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                              "logits": {0: "batch"}},
            )
        model.eval()
        proto = onnx.load(str(raw), load_external_data=True)
    set_metadata(proto, {
        "pcv.id2label": json.dumps({str(k): v for k, v in model.config.id2label.items()}),
        "pcv.max_length": str(max_length),
        "pcv.tokenizer": "perceiver-bytes",
        "pcv.variant": cfg.variant,
        "pcv.source_sha256": weights_hash(model),
        "pcv.version": pcv_version(),
        "pcv.opset": str(cfg.opset),
        ARCHITECTURE_KEY: json.dumps(architecture(model.config)),
    })
    # Staged in a folder beside `out` and moved into place only once checked and verified: a failed
    # export leaves no file behind, and an older file at `out` stays until the new one is good.
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        staged = stage / out.name  # the same name: external data (OUT.data) keeps its reference
        save_onnx(proto, staged)
        try:
            onnx.checker.check_model(str(staged))
        except onnx.checker.ValidationError as e:
            raise ModelError(f"{out}: the exported graph fails the ONNX checker: {e}") from e
        report = None
        if cfg.verify:
            report = verify_onnx(model, staged, max_length=max_length, texts=cfg.verify_texts)
            if not report.ok(cfg.tolerance):
                raise PcvError(f"{out}: verification failed (tolerance {cfg.tolerance:g}); nothing written:\n{report.format()}")
        for f in stage.iterdir():
            os.replace(f, out.parent / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _random_texts(rng: np.random.Generator, n: int, length: int) -> list[str]:
    # Random bytes decoded leniently: covers every byte id, multi-byte characters and specials.
    return [bytes(rng.integers(0, 256, length, dtype=np.uint8)).decode("utf-8", "replace") for _ in range(n)]


@torch.no_grad()
def verify_onnx(
    model: torch.nn.Module,
    path: str | Path,
    *,
    max_length: int,
    texts: tuple[str, ...] | list[str] = (),
    batch_sizes: tuple[int, ...] = (1, 3, 8),
    seq_lens: tuple[int, ...] = (8, 130, 0),  # 0 = max_length
) -> VerifyReport:
    """Reload `path` in onnxruntime (CPU) and compare it with torch on real text and random bytes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    tok = PerceiverByteTokenizer(model_max_length=max_length)
    rng = np.random.default_rng(0)
    report = VerifyReport()
    agree_n = agree_d = 0
    real = [t for t in texts if t] or _random_texts(rng, 8, 3000)
    for source in ("real", "random"):
        for b in batch_sizes:
            for seq in seq_lens:
                seq = min(seq or max_length, max_length)
                pool = real if source == "real" else _random_texts(rng, b, seq * 2)
                batch = [pool[(i * 7 + seq) % len(pool)] for i in range(b)]
                # pad to exactly `seq` so the graph is tested at that length
                enc = tok(batch, max_length=seq, truncation=True, padding="max_length")
                ref = model(inputs=torch.from_numpy(enc.input_ids), attention_mask=torch.from_numpy(enc.attention_mask)).logits.numpy()
                got = sess.run(None, dict(zip(names, (enc.input_ids, enc.attention_mask))))[0]
                diff = float(np.abs(ref - got).max())
                agree = int((ref.argmax(1) == got.argmax(1)).sum())
                agree_n += agree
                agree_d += b
                size = float(np.abs(ref).max())
                report.cases.append({"batch": b, "seq": seq, "source": source, "max_abs_diff": diff,
                                     "max_abs_logit": size, "agreement": agree / b})
                report.max_abs_diff = max(report.max_abs_diff, diff)
                report.max_scaled_diff = max(report.max_scaled_diff, diff / max(1.0, size))
    report.agreement = agree_n / agree_d
    return report
