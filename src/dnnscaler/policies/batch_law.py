"""How a batch's compute time grows with its size: a measured table, not one slope.

``c(b) = L * f(b)`` with ``f(1) = 1``. ``f`` is piecewise linear through the measured batch
sizes (knots) and continues past the largest with the slope of its last segment (``slope``).
An affine law is the special case with no knot but ``(1, 1)``.

Why a table: on a CPU a numpy model can run batch 1 on a vector path and bigger batches on
a matrix path (measured: 3.0 / 6.9 / 8.2 / 10.7 ms at 1 / 2 / 4 / 8), so one slope fitted
over every size the windows happened to run predicts none of them well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

MAX_SLOPE = 1.5  # relative compute per extra item, past which a measurement is noise


@dataclass(frozen=True)
class BatchLaw:
    """``f(b)``: knots ``(b, f)`` with increasing ``b``, starting at ``(1, 1)``."""

    knots: tuple[tuple[float, float], ...] = ((1.0, 1.0),)
    slope: float = 0.3

    @staticmethod
    def affine(alpha: float) -> BatchLaw:
        return BatchLaw(((1.0, 1.0),), alpha)

    def factor(self, b: float) -> float:
        """``f(b)`` (``b`` >= 1; below 1 it extrapolates the first segment)."""
        ks = self.knots
        for (b0, f0), (b1, f1) in pairwise(ks):
            if b <= b1:
                return f0 + (f1 - f0) * (b - b0) / (b1 - b0)
        bl, fl = ks[-1]
        return fl + self.slope * (b - bl)

    def segments(self) -> list[tuple[float, float, float, float]]:
        """``(b_start, b_end, f_start, slope)`` per piece; the last ends at infinity."""
        out = []
        ks = self.knots
        for (b0, f0), (b1, f1) in pairwise(ks):
            out.append((b0, b1, f0, (f1 - f0) / (b1 - b0)))
        bl, fl = ks[-1]
        out.append((bl, float("inf"), fl, self.slope))
        return out

    def fixed_point(self, k: float) -> float | None:
        """Smallest ``B >= 1`` with ``B = k f(B)`` (``k f(1) <= 1``: 1); None if none.

        The always-busy batcher's mean batch: each dispatch takes what arrived during the
        last one, ``B = lam c(B) / n``, i.e. ``k = lam L / n``.
        """
        if k * self.factor(1.0) <= 1.0:
            return 1.0
        for b0, b1, f0, s in self.segments():
            # ``k f(B) - B`` is positive at b0; the root is on this piece if it is not at b1.
            crosses = k * s < 1.0 if b1 == float("inf") else k * (f0 + s * (b1 - b0)) <= b1
            if crosses:
                # On this piece B = k (f0 + s (B - b0)), so B (1 - k s) = k (f0 - s b0).
                return max(b0, k * (f0 - s * b0) / (1.0 - k * s))
        return None

    def key(self) -> str:
        """A short string that changes when the law moves by ~3 % (for re-plan decisions)."""
        steps = (round(math.log(max(f, 1e-9)) / math.log(1.03)) for _, f in self.knots[1:])
        return ",".join(f"{b:g}:{q}" for (b, _), q in zip(self.knots[1:], steps, strict=True)) + (
            f"/{round(self.slope * 100)}"
        )
