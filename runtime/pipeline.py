"""The batch classifier: records -> windows -> tokenize + plan (thread) -> session.run -> results.

Stages are connected by a bounded queue: while onnxruntime runs one window (it releases the GIL),
a producer thread reads and tokenizes the next. Results come out in input order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import numpy.typing as npt

from .batching import BatchPlan, plan_batches
from .errors import ConfigError
from .readers import Record
from .session import OnnxClassifier, softmax
from .tokenizer import PerceiverByteTokenizer

DRAIN_SECONDS = 2.0  # how long an ending run waits for its reader thread


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    plan: BatchPlan = field(default_factory=BatchPlan)
    window: int = 4096  # records length-sorted together: bounds memory and the reorder buffer
    prefetch: int = 2  # windows prepared ahead of the session
    # session.run calls in flight at once (threads; onnxruntime releases the GIL). With 1 intra-op
    # thread each this trades intra-op parallelism for batch parallelism; pcv-bench --engine measures it.
    concurrent_runs: int = 1
    # Texts longer than the model reads: "head" classifies their first max_length tokens; "head-tail"
    # also their last ones and averages the two windows' probabilities (one more run per long text).
    long_text: str = "head"
    # Views of each text, as leading spaces: (0,) reads it once; (0, 4) also 4 bytes later in every
    # latent's patch, the probabilities averaged (one more run per text and shift).
    shifts: tuple[int, ...] = (0,)


@dataclass(frozen=True, slots=True)
class Result:
    record: Record
    probs: npt.NDArray[np.float32] | None  # (C,) or None when the record is bad
    truncated: bool = False


Batch = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]  # (idx, ids, mask)


LONG_TEXT = ("head", "head-tail")


@dataclass
class _Window:
    records: list[Record]
    good: list[int]  # positions in `records` with text
    batches: list[Batch]
    truncated: npt.NDArray[np.bool_]  # (len(good),)
    tails: npt.NDArray[np.int64]  # good texts also read from their end (head-tail); their tail windows follow the heads
    per_shift: int  # windows read at each shift: the len(good) heads, then the len(tails) tails; the batches index
    # len(shifts) such blocks, the k-th read after shifts[k] leading spaces


def check_shifts(shifts: tuple[int, ...], max_length: int) -> None:
    if not shifts or len(set(shifts)) != len(shifts) or min(shifts) < 0 or max(shifts) > max_length // 4:
        raise ConfigError(f"shifts {shifts}: distinct byte offsets from 0 to max_length/4 ({max_length // 4}), at least one")


def tail_text(text: str, max_length: int) -> str:
    """The end of `text` that fits max_length tokens with [CLS]/[SEP]: its last max_length - 2 UTF-8
    bytes, less a character cut in two at the start."""
    return text.encode("utf-8", "surrogatepass")[-(max_length - 2):].decode("utf-8", "ignore")


def _byte_lengths(texts: list[str]) -> npt.NDArray[np.int64]:
    return np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))


def plan_and_tokenize(
    texts: list[str], *, max_length: int, plan: BatchPlan, tok: PerceiverByteTokenizer | None = None,
    byte_lengths: npt.NDArray[np.int64] | None = None,
) -> list[Batch]:
    """Length-sorted batches of `texts`, tokenized (`byte_lengths`: their UTF-8 lengths, if the caller has them)."""
    tok = tok or PerceiverByteTokenizer(model_max_length=max_length)
    if byte_lengths is None:
        byte_lengths = _byte_lengths(texts)
    batches = []
    for idx in plan_batches(np.minimum(byte_lengths + 2, max_length), plan):
        enc = tok([texts[i] for i in idx], max_length=max_length, truncation=True, padding="longest")
        batches.append((idx, enc.input_ids, enc.attention_mask))
    return batches


def _prepare(records: list[Record], tok: PerceiverByteTokenizer, max_length: int, plan: BatchPlan,
             long_text: str = "head", shifts: tuple[int, ...] = (0,)) -> _Window:
    good = [i for i, r in enumerate(records) if r.text is not None]
    texts: list[str] = [records[i].text for i in good]  # type: ignore[misc]
    byte_lengths = _byte_lengths(texts)
    # a text is truncated when it had more bytes (with specials) than max_length allows
    truncated = byte_lengths + 2 > max_length
    tails = np.flatnonzero(truncated) if long_text == "head-tail" else np.zeros(0, np.int64)
    views: list[str] = []
    lengths = []
    for s in shifts:  # a shifted tail window keeps its length: s bytes fewer of the text's end
        pad = " " * s
        tail_texts = [pad + tail_text(texts[k], max_length - s) for k in tails]
        views += [pad + t for t in texts] if s else texts
        views += tail_texts
        lengths += [byte_lengths + s, _byte_lengths(tail_texts)]
    batches = plan_and_tokenize(views, max_length=max_length, plan=plan, tok=tok, byte_lengths=np.concatenate(lengths))
    return _Window(records, good, batches, truncated, tails, per_shift=len(texts) + len(tails))


def classify_records(records: Iterable[Record], clf: OnnxClassifier, cfg: PipelineConfig = PipelineConfig()) -> Iterator[Result]:
    """Classify a stream of records; yields one Result per record, in input order.

    >>> for res in classify_records(read_records("reviews.jsonl"), OnnxClassifier(path)):  # doctest: +SKIP
    ...     print(res.record.id, res.probs)
    """
    if cfg.long_text not in LONG_TEXT:
        raise ConfigError(f"long_text {cfg.long_text!r}: one of {LONG_TEXT}")
    check_shifts(cfg.shifts, clf.info.max_length)
    tok = PerceiverByteTokenizer(model_max_length=clf.info.max_length)
    q: queue.Queue = queue.Queue(maxsize=cfg.prefetch)
    stop = threading.Event()
    _DONE = object()

    def produce() -> None:
        try:
            it = iter(records)
            while not stop.is_set():
                chunk = list(islice(it, cfg.window))
                if not chunk:
                    break
                item = _prepare(chunk, tok, clf.info.max_length, cfg.plan, cfg.long_text, cfg.shifts)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # hand reader errors to the consumer, which re-raises them
            q.put(e)
            return
        q.put(_DONE)

    def run(batch: Batch) -> npt.NDArray[np.float32]:
        return softmax(clf.logits(batch[1], batch[2]))

    worker = threading.Thread(target=produce, name="pcv-prepare", daemon=True)
    worker.start()
    pool = ThreadPoolExecutor(cfg.concurrent_runs, thread_name_prefix="pcv-run") if cfg.concurrent_runs > 1 else None
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            n, c = len(item.good), len(clf.info.id2label)
            views = np.zeros((len(cfg.shifts) * item.per_shift, c), dtype=np.float32)
            for (idx, _, _), p in zip(item.batches, pool.map(run, item.batches) if pool else map(run, item.batches)):
                views[idx] = p
            views = views.reshape(len(cfg.shifts), item.per_shift, c)  # a window of bad records only: per_shift 0
            views[:, item.tails] = (views[:, item.tails] + views[:, n:]) / 2  # head-tail: the mean of both windows
            probs = views[:, :n].mean(0)  # the mean over the shifts
            slot = {pos: k for k, pos in enumerate(item.good)}
            for pos, rec in enumerate(item.records):
                k = slot.get(pos)
                yield Result(rec, None if k is None else probs[k], bool(k is not None and item.truncated[k]))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        stop.set()
        # Drain so the producer can finish; a producer blocked on its input (a FIFO nobody writes, a
        # line that never ends) is left behind, a daemon thread, so that a signal still ends the run.
        deadline = time.monotonic() + DRAIN_SECONDS
        while worker.is_alive() and time.monotonic() < deadline:
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
