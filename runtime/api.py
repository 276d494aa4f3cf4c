"""Classify texts held in memory with pcv-batch's engine: the Python face of the runtime.

>>> from pcv.runtime import TextClassifier
>>> clf = TextClassifier()  # the bundled IMDB model; or TextClassifier("m.int8.onnx", provider="cpu")
>>> clf(["A lovely, moving film.", "Dull, badly acted and far too long."])  # doctest: +SKIP
[{'label': 'pos', 'score': 0.984...}, {'label': 'neg', 'score': 0.958...}]
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .batching import BatchPlan
from .errors import ConfigError
from .pipeline import LONG_TEXT, PipelineConfig, check_shifts, classify_records
from .readers import Record
from .session import OnnxClassifier, SessionConfig, plan_engine, resolve_model


class TextClassifier:
    """An ONNX Perceiver classifier driven as pcv-batch drives it: texts length-sorted within
    windows, batched by `batch_size` and `max_tokens`, `concurrent_runs` session.run calls in
    flight, `long_text` for texts longer than the model reads, `shifts` for several views of each text. Unset engine values come from
    pcv-batch's per-provider defaults (session.ENGINES); `model` None is the bundled model."""

    def __init__(self, model: str | Path | None = None, *, provider: str = "auto", batch_size: int | None = None,
                 threads: int | None = None, concurrent_runs: int | None = None, max_tokens: int = 65_536,
                 window: int = 4096, long_text: str = "head", shifts: tuple[int, ...] = (0,)) -> None:
        if long_text not in LONG_TEXT:
            raise ConfigError(f"long_text {long_text!r}: one of {LONG_TEXT}")
        self.path = resolve_model(None if model is None else str(model))
        name, self.engine = plan_engine(self.path, provider, batch_size=batch_size, threads=threads,
                                        concurrent_runs=concurrent_runs)
        self.session = OnnxClassifier(self.path, SessionConfig(provider=name, threads=self.engine.threads,
                                                               allow_downgrade=provider == "auto"))
        if self.session.provider != name:  # auto's choice did not start (said on stderr): plan for what ran
            name, self.engine = plan_engine(self.path, self.session.provider, batch_size=batch_size, threads=threads,
                                            concurrent_runs=concurrent_runs)
            self.session = OnnxClassifier(self.path, SessionConfig(provider=name, threads=self.engine.threads))
        self.config = PipelineConfig(plan=BatchPlan(batch_size=self.engine.batch_size, max_tokens=max_tokens),
                                     window=window, concurrent_runs=self.engine.concurrent_runs, long_text=long_text,
                                     shifts=tuple(shifts))
        info = self.session.info
        check_shifts(self.config.shifts, info.max_length)
        self.labels = tuple(info.id2label[i] for i in range(len(info.id2label)))

    def predict_proba(self, texts: str | Iterable[str]) -> npt.NDArray[np.float32]:
        """(N, C) class probabilities, rows in the order of `texts`, columns in the order of `labels`;
        a single string is one text (N = 1), as in a transformers pipeline."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, expected str")
        probs = np.zeros((len(texts), len(self.labels)), np.float32)
        records = (Record(line=i + 1, id=i, text=t) for i, t in enumerate(texts))
        for res in classify_records(records, self.session, self.config):
            probs[res.record.id] = res.probs
        return probs

    def predict(self, texts: str | Iterable[str]) -> list[str]:
        """The most probable label of each text."""
        return [self.labels[k] for k in self.predict_proba(texts).argmax(1)]

    def __call__(self, texts: str | Iterable[str]) -> list[dict[str, str | float]]:
        """`[{"label": ..., "score": ...}]` per text, as a transformers text-classification pipeline gives."""
        probs = self.predict_proba(texts)
        best = probs.argmax(1)
        return [{"label": self.labels[k], "score": float(p[k])} for k, p in zip(best, probs)]
