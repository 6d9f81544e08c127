"""The published DNNScaler batching scaler: a binary search on the batch size.

Faithful to the authors' code: every 3 s (1 s reports aggregated by elapsed time) the mean
latency of the interval is compared with the SLO. Inside the dead band
``[0.85 * SLO, SLO]`` it holds. Below the band it moves up, ``idx = ceil((lo + hi) / 2)``;
above the SLO it moves down, ``idx = floor((lo + hi) / 2)``. The search runs over an index
``idx`` in ``0..MAX`` with batch size ``idx + 1`` (sizes 1..127, capped by the limits).
When the search is pinned at a bound it re-opens it: going up from ``idx == hi`` sets
``lo = hi, hi = MAX``; going down from ``idx == lo`` sets ``hi = lo, lo = 0``. That is how
it follows SLO and load changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

PAPER_MAX_BATCH = 127
BAND_LOW = 0.85


@dataclass(frozen=True)
class BinarySearch:
    """Search bounds and current index (batch size = ``idx + 1``)."""

    lo: int = 0
    hi: int = PAPER_MAX_BATCH
    idx: int = 0

    @property
    def batch_size(self) -> int:
        return self.idx + 1


def max_index(limit_batch_size: int) -> int:
    """Largest search index allowed: batch sizes 1..127, capped by the server's limit."""
    return min(PAPER_MAX_BATCH, limit_batch_size) - 1


def initial_search(limit_batch_size: int) -> BinarySearch:
    return BinarySearch(lo=0, hi=max_index(limit_batch_size), idx=0)


def step(search: BinarySearch, latency_ms: float, slo_ms: float, top: int) -> BinarySearch:
    """One control interval of the published scaler; ``top`` is the largest legal index."""
    if BAND_LOW * slo_ms <= latency_ms <= slo_ms:
        return search
    lo, hi, idx = search.lo, min(search.hi, top), min(search.idx, top)
    if latency_ms < BAND_LOW * slo_ms:
        if idx >= top:
            return replace(search, idx=top, hi=hi)
        if idx >= hi:
            lo, hi = hi, top
        else:
            lo = idx
        return BinarySearch(lo=lo, hi=hi, idx=math.ceil((lo + hi) / 2))
    # Above the SLO.
    if idx <= 0:
        return BinarySearch(lo=0, hi=hi, idx=0)
    if idx <= lo:
        lo, hi = 0, lo
    else:
        hi = idx
    return BinarySearch(lo=lo, hi=hi, idx=math.floor((lo + hi) / 2))
