"""Batch planning: group texts of similar length so padding is small, within a token budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class BatchPlan:
    batch_size: int = 64  # most texts in one session.run
    max_tokens: int = 65_536  # most padded tokens (batch x longest) in one session.run


def plan_batches(lengths: npt.NDArray[np.int64], plan: BatchPlan = BatchPlan()) -> list[npt.NDArray[np.int64]]:
    """Split indices into batches of similar length; every index appears exactly once.

    Longest first, so the largest allocations happen early and later batches reuse memory.
    A batch grows while count <= batch_size and count * its longest length <= max_tokens.

    >>> [b.tolist() for b in plan_batches(np.array([5, 100, 7, 98]), BatchPlan(batch_size=2))]
    [[1, 3], [2, 0]]
    """
    if plan.batch_size < 1 or plan.max_tokens < 1:
        raise ConfigError(f"batch_size and max_tokens must be positive, got {plan}")
    order = np.argsort(-lengths, kind="stable")  # (N,) longest first
    batches: list[npt.NDArray[np.int64]] = []
    start = 0
    n = len(order)
    while start < n:
        longest = int(lengths[order[start]])  # the first is the longest of its batch
        by_tokens = max(1, plan.max_tokens // max(1, longest))
        stop = min(n, start + min(plan.batch_size, by_tokens))
        batches.append(order[start:stop])
        start = stop
    return batches


def padding_ratio(lengths: npt.NDArray[np.int64], batches: list[npt.NDArray[np.int64]]) -> float:
    """Padded tokens / real tokens for a plan (1.0 = no padding)."""
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    return padded / max(1, int(lengths.sum()))
