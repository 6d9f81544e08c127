"""The latency surface ``c(b, m)`` of one model on one GPU, learned from live statistics.

Model: a batch of ``b`` with ``m`` instances busy takes ``L(m) * (1 + alpha (b - 1))``, capped
below by a throughput roofline ``m b / peak``.

- ``alpha`` (batching slope) comes from a count-weighted regression ``compute = p + q b``
  over every batch executed (decayed sums, pooled across windows per instance count, so that
  a change of batch size teaches it even when each window ran a single size, as under an
  overload): ``alpha = q / (p + q)``.
- ``L(m)`` comes from every window: its compute times normalised by ``1 + alpha (b - 1)``,
  attributed to the busy count the batches saw. The mean busy count is ``U = busy time /
  window``; a batch sees ``m = 1 + U (n - 1) / n`` (its own plus the others, binomial).
  Unvisited ``m`` are filled by a rank-2 fit on the basis of the known networks' contention
  curves (the matrix the paper completes: mean row plus two principal components of
  ``data/mt_latency_ms.csv`` scaled by ``k = 1``), ridge-regularised toward the mean curve.
- A **saturated device** bounds contention from below: where a window at busy count ``m_s``
  found the device's compute all in use (``device_busy_share`` >= ``SATURATED_BUSY``; only
  reported where it measures capacity, e.g. host CPUs), ``m > m_s`` instances can only
  time-share it, so ``L(m) >= L(m_s) m / m_s``. Without it, the prior's contention (the
  known GPUs') makes a third instance on a 2-core CPU look like a gain.
- ``peak`` (items/s the GPU can do) starts at ``(1 + PEAK_HEADROOM)`` times the best
  single-knob throughput the model predicts and rises if a window measured more.

All sums decay with elapsed time (half-life ``memory_s``) so the surface follows
interference; a window that disagrees strongly with the model discounts the old evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from dnnscaler.core.types import BatchStat, WindowStats
from dnnscaler.policies.matrix_completion import known_rows

ALPHA_PRIOR = 0.3
ALPHA_PRIOR_WEIGHT = 0.2
PEAK_HEADROOM = 0.1
RIDGE = 0.3
BLEND_WEIGHT = 3.0  # measured windows at which a bin's own mean outweighs the fit
SURPRISE = 0.3  # relative disagreement that discounts old evidence
CONFOUNDED_WEIGHT = 0.1  # weight of multi-instance windows in the batching slope
OPTIMISM_STEPS = 1  # busy counts beyond the measured ones that get the optimistic trend
TRUSTED_WEIGHT = 1.0  # bin weight (in full windows) from which a busy count is "measured"
SATURATED_BUSY = 0.9  # device busy share from which the device counts as saturated
UNSATURATED_BUSY = 0.75  # below this at the saturated busy count, the saturation is gone
SATURATION_EVIDENCE = 0.5  # full windows of saturated evidence before it bounds the curve


@lru_cache(maxsize=1)
def contention_basis() -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(mean curve, PC1, PC2) of the known networks' ``L(k) / L(1)``, k = 1..10."""
    rows = np.array([[v / r.latency_ms[0] for v in r.latency_ms] for r in known_rows()])
    mean = rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    return (
        tuple(float(x) for x in mean),
        tuple(float(x) for x in vt[0]),
        tuple(float(x) for x in vt[1]),
    )


def _interp(curve: tuple[float, ...], m: float) -> float:
    """Linear interpolation at fractional ``m`` (1-based), linear extrapolation past the end."""
    k = len(curve)
    x = min(max(m, 1.0), float(10 * k))
    i = min(math.floor(x), k - 1)
    i = max(i, 1)
    lo, hi = curve[i - 1], curve[i]
    return lo + (hi - lo) * (x - i)


@dataclass(frozen=True)
class Surface:
    """Decayed evidence about the surface; ``bins[m-1]`` holds (weight, weighted sum of L)."""

    updated_s: float | None = None
    # Per instance count n (index n-1): decayed (sum w, sum w b, sum w b^2, sum w c,
    # sum w b c) over executed batches, w the execution count, c the mean compute time.
    slope: tuple[tuple[float, float, float, float, float], ...] = ()
    bin_w: tuple[float, ...] = ()
    bin_sum: tuple[float, ...] = ()
    peak_seen_rps: float = 0.0
    # Decayed weight and weighted sum of the busy counts of windows with a saturated device.
    sat_w: float = 0.0
    sat_sum: float = 0.0

    @property
    def saturated_m(self) -> float | None:
        """The busy count at which the device was measured saturated (None: not seen)."""
        return self.sat_sum / self.sat_w if self.sat_w >= SATURATION_EVIDENCE else None

    @property
    def alpha(self) -> float:
        return _alpha(self.slope)

    @property
    def known(self) -> bool:
        return sum(self.bin_w) > 0

    def curve(self, n_max: int, optimism_steps: int = OPTIMISM_STEPS) -> tuple[float, ...]:
        """Predicted ``L(m)`` for m = 1..n_max (empty evidence: all zeros)."""
        w = list(self.bin_w) + [0.0] * max(0, n_max - len(self.bin_w))
        s = list(self.bin_sum) + [0.0] * max(0, n_max - len(self.bin_sum))
        if sum(w) <= 0:
            return tuple(0.0 for _ in range(n_max))
        mean, pc1, pc2 = contention_basis()
        # Weighted least squares for L(m) = a*mean(m) + b*pc1(m) + c*pc2(m), relative error.
        level = sum(s) / sum(w)
        rows, rhs = [], []
        for m in range(1, n_max + 1):
            if w[m - 1] <= 0:
                continue
            y = s[m - 1] / w[m - 1]
            sw = math.sqrt(w[m - 1]) / y
            rows.append([sw * _interp(mean, m), sw * _interp(pc1, m), sw * _interp(pc2, m)])
            rhs.append(sw * y)
        r = math.sqrt(RIDGE) / level
        rows += [[0.0, r, 0.0], [0.0, 0.0, r]]
        rhs += [0.0, 0.0]
        coef, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
        out: list[float] = []
        for m in range(1, n_max + 1):
            fit = coef[0] * _interp(mean, m) + coef[1] * _interp(pc1, m) + coef[2] * _interp(pc2, m)
            fit = max(float(fit), 0.2 * level)
            wm = w[m - 1]
            meas = s[m - 1] / wm if wm > 0 else fit
            out.append((wm * meas + BLEND_WEIGHT * fit) / (wm + BLEND_WEIGHT))
        # Optimism beyond the measured range: contention grows no faster than the trend of
        # the last two measured busy counts, so that the policy goes and looks (the busy
        # counts it can measure rise with the load) instead of trusting the prior forever.
        # Only ``OPTIMISM_STEPS`` counts out: exploration stays bounded.
        m_hi = max((m for m in range(1, n_max + 1) if w[m - 1] >= TRUSTED_WEIGHT), default=1)
        gamma = 0.0
        if m_hi >= 2 and w[m_hi - 2] >= TRUSTED_WEIGHT:
            gamma = math.log(out[m_hi - 1] / out[m_hi - 2]) / math.log(m_hi / (m_hi - 1))
            gamma = min(1.0, max(0.0, gamma))
        reach = min(n_max, m_hi + optimism_steps)
        for m in range(m_hi + 1, reach + 1):
            out[m - 1] = min(out[m - 1], out[m_hi - 1] * (m / m_hi) ** gamma)
        m_s = self.saturated_m
        if m_s is not None and n_max > m_s:
            # Past saturation, instances only time-share the device (see the module doc).
            l_s = _interp(tuple(out), m_s)
            for m in range(math.floor(m_s) + 1, n_max + 1):
                out[m - 1] = max(out[m - 1], l_s * m / m_s)
        return tuple(out)

    def compute_ms(self, b: float, m: int, curve: tuple[float, ...], peak_rps: float) -> float:
        affine = curve[m - 1] * (1.0 + self.alpha * (b - 1.0))
        return max(affine, 1000.0 * m * b / peak_rps) if peak_rps > 0 else affine

    def peak_rps(self, curve: tuple[float, ...], max_batch: int) -> float:
        """The GPU roofline in items/s (prior: headroom over the best single knob)."""
        if not curve or curve[0] <= 0:
            return self.peak_seen_rps
        a = self.alpha
        batching = 1000.0 * max_batch / (curve[0] * (1.0 + a * (max_batch - 1)))
        mt = max(1000.0 * m / lat for m, lat in enumerate(curve, start=1) if lat > 0)
        return max((1.0 + PEAK_HEADROOM) * max(batching, mt), self.peak_seen_rps)

    def observe(self, w: WindowStats, instances: int, now_s: float, memory_s: float) -> Surface:
        """This surface with one more window (measured under ``instances``) folded in."""
        stats = [(b, s) for b, s in w.batch_stats.items() if s.count > 0 and s.compute_ms_mean > 0]
        if not stats and w.compute_mean_ms and w.completed > 0:
            # A server without per-batch statistics: its mean compute time, as batch 1.
            stats = [(1, BatchStat(w.completed, w.compute_mean_ms))]
        if not stats:
            return self
        size = max(instances, len(self.bin_w))
        bw = list(self.bin_w) + [0.0] * (size - len(self.bin_w))
        bs = list(self.bin_sum) + [0.0] * (size - len(self.bin_sum))
        zero = (0.0, 0.0, 0.0, 0.0, 0.0)
        sl = list(self.slope) + [zero] * (max(instances, len(self.slope)) - len(self.slope))
        sat_w, sat_sum = self.sat_w, self.sat_sum
        if self.updated_s is not None:
            decay = 0.5 ** (max(0.0, now_s - self.updated_s) / memory_s)
            bw = [x * decay for x in bw]
            bs = [x * decay for x in bs]
            sl = [_scaled(r, decay) for r in sl]
            sat_w, sat_sum = sat_w * decay, sat_sum * decay
        execs = sum(s.count for _, s in stats)
        # Batching slope: this window's batches join the pooled regression of its count.
        s0, s1, s2, sc, sbc = sl[instances - 1]
        for b, st in stats:
            c = st.compute_ms_mean
            s0, s1, s2 = s0 + st.count, s1 + st.count * b, s2 + st.count * b * b
            sc, sbc = sc + st.count * c, sbc + st.count * b * c
        sl[instances - 1] = (s0, s1, s2, sc, sbc)
        a = _alpha(tuple(sl))
        busy_ms = sum(s.count * s.compute_ms_mean for _, s in stats)
        util = busy_ms / max(1e-6, w.window_s * 1000.0)
        m_seen = 1.0 + min(util, float(instances)) * (instances - 1) / instances
        norm = busy_ms / sum(s.count * (1.0 + a * (b - 1)) for b, s in stats)
        # Discount old evidence if this window disagrees with it (interference, SLO moves).
        lo_bin = min(math.floor(m_seen), size)
        frac = m_seen - lo_bin
        if self.known:
            expected = self.curve(size)
            exp_m = expected[lo_bin - 1] * (1 - frac) + expected[min(lo_bin, size - 1)] * frac
            if exp_m > 0 and abs(norm / exp_m - 1.0) > SURPRISE and execs >= 10:
                keep = 0.2
                bw = [x * keep for x in bw]
                bs = [x * keep for x in bs]
                sl = [_scaled(r, keep) for r in sl]
        wt = min(1.0, execs / 20.0)
        busy = w.device_busy_share
        if busy is not None and busy >= SATURATED_BUSY:
            sat_w, sat_sum = sat_w + wt, sat_sum + wt * m_seen
        elif (
            busy is not None
            and busy < UNSATURATED_BUSY
            and sat_w > 0
            and m_seen >= sat_sum / sat_w - 0.25
        ):
            # Spare compute at the busy count that saturated it: the device was shared with
            # work that has gone (a co-located model, a host job).
            sat_w, sat_sum = sat_w * 0.2, sat_sum * 0.2
        for m_bin, share in ((lo_bin, 1.0 - frac), (min(lo_bin + 1, size), frac)):
            if share > 0:
                bw[m_bin - 1] += wt * share
                bs[m_bin - 1] += wt * share * norm
        # Items per second actually completed: a lower bound on the roofline.
        seen = sum(b * s.count for b, s in stats) / max(1e-6, w.window_s)
        return replace(
            self,
            updated_s=now_s,
            slope=tuple(sl),
            bin_w=tuple(bw),
            bin_sum=tuple(bs),
            peak_seen_rps=max(self.peak_seen_rps * (0.5 ** (1.0 / memory_s)), seen),
            sat_w=sat_w,
            sat_sum=sat_sum,
        )


def _scaled(
    r: tuple[float, float, float, float, float], k: float
) -> tuple[float, float, float, float, float]:
    return (r[0] * k, r[1] * k, r[2] * k, r[3] * k, r[4] * k)


def _alpha(slope: tuple[tuple[float, float, float, float, float], ...]) -> float:
    """Batching slope from the pooled regressions, shrunk toward the prior.

    With several instances, bigger batches coincide with busier GPUs: the slope is
    confounded with contention, so those regressions count less.
    """
    w_tot = ALPHA_PRIOR_WEIGHT
    a_tot = ALPHA_PRIOR * ALPHA_PRIOR_WEIGHT
    for n, (s0, s1, s2, sc, sbc) in enumerate(slope, start=1):
        if s0 < 2.0:
            continue
        mb = s1 / s0
        var = s2 / s0 - mb * mb
        if var <= 0.05:
            continue
        q = (sbc / s0 - mb * sc / s0) / var
        p = sc / s0 - q * mb
        if p + q <= 0:
            continue
        confounded = 1.0 if n == 1 else CONFOUNDED_WEIGHT
        w = confounded * s0 * min(var, 4.0) / 4.0
        w_tot += w
        a_tot += w * min(1.5, max(0.0, q / (p + q)))
    return min(1.5, max(0.0, a_tot / w_tot))
