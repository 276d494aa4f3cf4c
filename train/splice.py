"""Splice augmentation (pcv-train --splice-augment): texts nobody wrote, labelled by the teacher.

A trained student scored 98.5 % on its own training reviews and 88.8 % on validation: it had
memorised the pool. A splice — the start of one pool text and the end of another, each cut at a
whitespace — is new every step, so its label cannot be memorised; the n-gram teacher
(teacher.NgramScorer) scores it as it scores any text. The Python work (two cuts, the teacher's
n-grams, the dense lexicon's words: 1-2.5 ms a text) runs ahead of the step, in a thread or, with
`workers` > 1, in that many processes each making a step, so on a GPU it overlaps the step instead
of holding it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def splice(a: str, b: str, rng: np.random.Generator) -> str:
    """The start of `a` and the end of `b`, each cut at a whitespace between a quarter and three
    quarters of the way in (or at the end of `a` / of `b` when there is none)."""
    def cut(t: str) -> int:
        i = int(len(t) * rng.uniform(0.25, 0.75))
        return next((k for k in range(i, len(t)) if t[k].isspace()), len(t))
    return a[: cut(a)] + b[cut(b) :]


@dataclass(frozen=True)
class Made:
    rows: npt.NDArray[np.int64]  # the batch rows they replace, ascending
    texts: list[str]
    probs: npt.NDArray[np.float32]  # (len(rows), C) the teacher's
    words: list | None  # their dense-lexicon words (teacher.Words), None without dense distillation


class Splicer:
    """The splices of each training step, drawn from (seed, step) alone — a resumed run makes the ones
    the uninterrupted run made — and made ahead: the next step in a worker thread, or with `workers`
    > 1 the next `workers` steps in as many processes (spawned; the scorer and `words` must pickle).
    Use as a context manager.

        with Splicer(pool, scorer, share=0.5, batch_size=32, seed=0) as splicer:
            made = splicer(step)
    """

    def __init__(self, pool: list[str], scorer: Callable[[list[str]], npt.NDArray[np.float32]], *, share: float,
                 batch_size: int, seed: int, words: Callable[[str], object] | None = None, workers: int = 1) -> None:
        self.pool, self.scorer, self.words = pool, scorer, words
        self.share, self.batch_size, self.seed, self.workers = share, batch_size, seed, workers
        self._ahead: dict[int, Future] = {}  # step -> its splices being made
        self._pool: Executor | None = None

    def __getstate__(self) -> dict:  # what a worker process gets: no executor, no futures
        return {**self.__dict__, "_pool": None, "_ahead": {}}

    def make(self, step: int) -> Made:
        rng = np.random.default_rng([self.seed, step, 1])
        rows = np.flatnonzero(rng.random(self.batch_size) < self.share)
        pairs = rng.integers(0, len(self.pool), (len(rows), 2))
        texts = [splice(self.pool[a], self.pool[b], rng) for a, b in pairs.tolist()]
        words = [self.words(t) for t in texts] if self.words else None
        return Made(rows, texts, self.scorer(texts), words)  # a step may have no splices: (0, C) probabilities

    def __call__(self, step: int) -> Made:
        if self._pool is None:
            raise RuntimeError("use Splicer in a with block")
        ahead = self._ahead.pop(step, None)
        made = ahead.result() if ahead is not None else self.make(step)
        wanted = range(step + 1, step + 1 + self.workers)
        for k in [k for k in self._ahead if k not in wanted]:  # a resume or a jump: steps not coming
            self._ahead.pop(k).cancel()
        make = self.make if isinstance(self._pool, ThreadPoolExecutor) else _make_in_worker
        for k in wanted:
            if k not in self._ahead:
                self._ahead[k] = self._pool.submit(make, k)
        return made

    def __enter__(self) -> Splicer:
        if self.workers > 1:  # spawn, not fork: torch's thread pools (and CUDA) are already up in this process
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self,))
        else:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="splice")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._pool is not None
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._ahead = None, {}


_WORKER: Splicer | None = None  # in a worker process: the Splicer it makes steps for


def _start_worker(splicer: Splicer) -> None:
    global _WORKER
    _WORKER = splicer


def _make_in_worker(step: int) -> Made:
    assert _WORKER is not None, "a Splicer's worker process"
    return _WORKER.make(step)
