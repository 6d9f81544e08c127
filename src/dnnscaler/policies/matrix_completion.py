"""Low-rank matrix completion of latency-vs-instance-count rows (the paper's MT estimator).

DNNScaler estimates how a new network's batch-1 latency grows with the number ``k`` of
co-located instances from only two measurements (``k = 1`` and ``k = 8``), by completing a
matrix whose other rows are known networks (``data/mt_latency_ms.csv``) under a rank-2
nuclear-norm prior. The authors used TFOCS ``solver_sNuclearBP``; we use soft-impute
(Mazumder, Hastie, Tibshirani 2010): iterate "fill the missing entries from the current
estimate, take an SVD, soft-threshold the singular values, keep the top ``rank``" along a
decreasing threshold path. Each row is scaled by its ``k = 1`` latency first so that a 1 s
video network and a 5 ms MobileNet weigh the same.
"""

from __future__ import annotations

import csv
import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float64]

MAX_INSTANCES = 10


@dataclass(frozen=True)
class KnownRow:
    """One known network: batch-1 mean latency (ms) at k = 1..10 co-located instances."""

    dataset: str
    dnn: str
    latency_ms: tuple[float, ...]


@lru_cache(maxsize=1)
def known_rows() -> tuple[KnownRow, ...]:
    """The shipped latency matrix (a copy of the authors' measurements, package data)."""
    text = (
        importlib.resources.files("dnnscaler.policies")
        .joinpath("data/mt_latency_ms.csv")
        .read_text(encoding="utf-8")
    )
    rows = list(csv.reader(text.splitlines()))
    out = []
    for r in rows[1:]:
        if not r:
            continue
        out.append(KnownRow(r[0], r[1], tuple(float(x) for x in r[2 : 2 + MAX_INSTANCES])))
    return tuple(out)


def soft_impute(
    observed: Matrix,
    mask: NDArray[np.bool_],
    rank: int = 2,
    iterations: int = 300,
    shrink_path: Sequence[float] = (0.3, 0.1, 0.03, 0.01, 0.0),
) -> Matrix:
    """Complete ``observed`` (entries where ``mask`` is True are known) at the given rank.

    ``shrink_path`` gives the soft-threshold as a fraction of the largest singular value of
    the zero-filled matrix, warm-starting each stage from the previous one (nuclear-norm
    regularisation path); the last stage with threshold 0 is a hard rank-``rank``
    projection that fits the observed entries as tightly as the rank allows.
    """
    x = np.where(mask, observed, 0.0)
    sigma_max = float(np.linalg.svd(x, compute_uv=False)[0]) or 1.0
    z = x.copy()
    # Start the missing entries from their column means: a sane, deterministic guess.
    col_means = np.array(
        [observed[mask[:, j], j].mean() if mask[:, j].any() else 0.0 for j in range(x.shape[1])]
    )
    z = np.where(mask, observed, col_means[None, :])
    per_stage = max(1, iterations // max(1, len(shrink_path)))
    for frac in shrink_path:
        lam = frac * sigma_max
        for _ in range(per_stage):
            filled = np.where(mask, observed, z)
            u, s, vt = np.linalg.svd(filled, full_matrices=False)
            s = np.maximum(s - lam, 0.0)[:rank]
            z_new = (u[:, :rank] * s) @ vt[:rank]
            if np.linalg.norm(z_new - z) <= 1e-9 * (np.linalg.norm(z) + 1e-12):
                z = z_new
                break
            z = z_new
    return z


def estimate_row(
    measured_ms: Mapping[int, float],
    known: Sequence[Sequence[float]] | None = None,
    rank: int = 2,
) -> tuple[float, ...]:
    """Estimated batch-1 latency (ms) at k = 1..10 instances for a new network.

    ``measured_ms`` maps instance counts (1-based, must include 1) to measured latencies;
    ``known`` are the other networks' full rows (the shipped matrix by default). Measured
    entries are returned as measured.
    """
    if 1 not in measured_ms or measured_ms[1] <= 0:
        raise ValueError("estimate_row needs a positive latency measured at k = 1")
    rows = [
        tuple(r) for r in (known if known is not None else [k.latency_ms for k in known_rows()])
    ]
    cols = MAX_INSTANCES
    base = np.array([[v / r[0] for v in r[:cols]] for r in rows], dtype=np.float64)
    scale = measured_ms[1]
    new = np.zeros(cols)
    new_mask = np.zeros(cols, dtype=bool)
    for k, v in measured_ms.items():
        if 1 <= k <= cols and v > 0:
            new[k - 1] = v / scale
            new_mask[k - 1] = True
    observed = np.vstack([base, new[None, :]])
    mask = np.vstack([np.ones_like(base, dtype=bool), new_mask[None, :]])
    completed = soft_impute(observed, mask, rank=rank)
    est = np.where(new_mask, new, completed[-1]) * scale
    # Latency never drops below a small fraction of the single-instance latency.
    est = np.maximum(est, 0.05 * scale)
    return tuple(float(v) for v in est)
