"""The latency surface ``c(b, m)`` of one model on one GPU, learned from live statistics.

Model: a batch of ``b`` with ``m`` instances busy takes ``L(m) * f(b)``, capped below by a
throughput roofline ``m b / peak``.

- ``f`` (the batch law, ``batch_law``) is a table: the compute time of every batch size
  executed, per busy count, in decayed cells ``(m, b)`` pooled across windows (so that a
  change of batch size teaches it even when each window ran a single size, as under an
  overload). A separable fit ``log c = g_b + l_m`` over the cells gives the compute time at
  ``m = 1`` of each size; multi-instance cells count less there, because with several
  instances bigger batches coincide with busier devices. Sizes never run are interpolated,
  and sizes past the largest run follow the slope of the last measured piece.
- ``L(m)`` comes from every window: its compute times normalised by ``f(b)``,
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
- On the same devices the busy share also says how many instances get compute of their own
  (``useful_instances``): the whole-device time the windows kept busy over their
  instances' compute time is the share one computing instance takes.
- ``peak`` (items/s the GPU can do) starts at ``(1 + PEAK_HEADROOM)`` times the best
  single-knob throughput the model predicts and rises if a window measured more.

All sums decay with elapsed time (half-life ``memory_s``) so the surface follows
interference; a window that disagrees strongly with the model discounts the old evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from dnnscaler.core.types import BatchStat, WindowStats
from dnnscaler.policies.batch_law import MAX_SLOPE, BatchLaw
from dnnscaler.policies.matrix_completion import known_rows

ALPHA_PRIOR = 0.3
SLOPE_PRIOR_WEIGHT = 0.02  # windows' worth of the prior slope past the largest size run
PEAK_HEADROOM = 0.1
RIDGE = 0.3
BLEND_WEIGHT = 3.0  # measured windows at which a bin's own mean outweighs the fit
SURPRISE = 0.3  # relative disagreement that discounts old evidence
CONFOUNDED_WEIGHT = 0.1  # weight of multi-instance windows in the batch law
KNOT_WEIGHT = 0.2  # windows (decayed) from which a batch size is a knot of the law
SMALL_SIZES = 8  # every batch size up to this keeps batch-law cells
CELL_FLOOR = 1e-4  # cells whose decayed weight fell below this are dropped
LEVEL_PRIOR_WEIGHT = 0.05  # windows' worth of the prior contention shape in L(m)'s fit
CONTENTION_PRIOR_WEIGHT = 0.05  # windows' worth of the prior contention in the law's fit
OPTIMISM_STEPS = 1  # busy counts beyond the measured ones that get the optimistic trend
OPTIMISM_MAX_WEIGHT = 0.1  # bin weight (windows) from which a busy count is not optimistic
TRUSTED_WEIGHT = 1.0  # bin weight (in full windows) from which a busy count is "measured"
SATURATED_BUSY = 0.9  # device busy share from which the device counts as saturated
UNSATURATED_BUSY = 0.75  # below this at the saturated busy count, the saturation is gone
SATURATION_EVIDENCE = 0.5  # full windows of saturated evidence before it bounds the curve
FULL_WINDOW_BATCHES = 20  # batches from which a window counts fully in the batch law
WORK_EVIDENCE_MS = 500.0  # instances' compute (ms, decayed) before ``useful_instances`` counts
USEFUL_SLACK = 0.05  # a share within this of 1 / k still allows k instances (noise)


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
    # Batch-law evidence: (busy count in quarters, batch size b, decayed weight, weighted
    # sum of log compute ms); in windows, less for multi-instance ones.
    cells: tuple[tuple[int, int, float, float], ...] = ()
    law: BatchLaw = field(default_factory=BatchLaw)
    # Contention evidence: (busy count in quarters, decayed weight, weighted sum of the
    # window's batch-1-equivalent compute ms).
    level_cells: tuple[tuple[int, float, float], ...] = ()
    peak_seen_rps: float = 0.0
    # Decayed weight and weighted sum of the busy counts of windows with a saturated device.
    sat_w: float = 0.0
    sat_sum: float = 0.0
    # The last window that disagreed with the evidence (``SURPRISE``): when, and its compute
    # over what the surface expected (> 1: the device got slower, e.g. a co-located model).
    shift_s: float | None = None
    shift_ratio: float = 1.0
    # Cores devices (those reporting ``device_busy_share``): decayed sums of the whole-device
    # time the windows kept busy and of their instances' compute time (ms).
    work_device_ms: float = 0.0
    work_compute_ms: float = 0.0

    @property
    def useful_instances(self) -> int | None:
        """How many instances a cores device can run at once on compute of their own
        (None: not a cores device, or too little evidence).

        An instance computing takes a share of the device: at most the device time kept
        busy over the instances' compute time (the host's busy time also counts the
        server's frontend and a load generator sharing it, so this overstates the share).
        Past ``ceil(1 / share)`` instances only time-share what the others use: a model
        that waits (on I/O, on a lock) uses little of the device and may run many; one
        that computes on a core of a 2-core host, two.
        """
        if self.work_compute_ms < WORK_EVIDENCE_MS or self.work_device_ms <= 0:
            return None
        share = self.work_device_ms / self.work_compute_ms
        return max(1, math.ceil(1.0 / share - USEFUL_SLACK))

    @property
    def saturated_m(self) -> float | None:
        """The busy count at which the device was measured saturated (None: not seen)."""
        return self.sat_sum / self.sat_w if self.sat_w >= SATURATION_EVIDENCE else None

    @property
    def alpha(self) -> float:
        """The marginal batching slope (relative compute per extra item past the table)."""
        return self.law.slope

    @property
    def bin_w(self) -> tuple[float, ...]:
        """Decayed windows of evidence per busy count m (index m-1), up to the largest seen."""
        out: list[float] = []
        for q, cw, _ in self.level_cells:
            for m, share in _neighbours(q):
                out += [0.0] * (m - len(out))
                out[m - 1] += cw * share
        return tuple(out)

    @property
    def known(self) -> bool:
        return sum(self.bin_w) > 0

    def curve(self, n_max: int, optimism_steps: int = OPTIMISM_STEPS) -> tuple[float, ...]:
        """Predicted ``L(m)`` for m = 1..n_max (empty evidence: all zeros)."""
        w = list(self.bin_w) + [0.0] * max(0, n_max - len(self.bin_w))
        if sum(w) <= 0:
            return tuple(0.0 for _ in range(n_max))
        levels = _levels(self.level_cells, len(w))
        mean, pc1, pc2 = contention_basis()
        # Weighted least squares for L(m) = a*mean(m) + b*pc1(m) + c*pc2(m), relative error.
        level = sum(c[2] for c in self.level_cells) / sum(c[1] for c in self.level_cells)
        rows, rhs = [], []
        for m in range(1, n_max + 1):
            if w[m - 1] <= 0:
                continue
            y = levels[m - 1]
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
            meas = levels[m - 1] if wm > 0 else fit
            out.append((wm * meas + BLEND_WEIGHT * fit) / (wm + BLEND_WEIGHT))
        # Optimism beyond the measured range: contention grows no faster than the trend of
        # the last two measured busy counts, so that the policy goes and looks (the busy
        # counts it can measure rise with the load) instead of trusting the prior forever.
        # Only ``OPTIMISM_STEPS`` counts out: exploration stays bounded. A busy count once
        # measured keeps what it measured while its evidence decays: were it optimistic
        # again, the policy would go back and look once per memory (an oscillation).
        m_hi = max((m for m in range(1, n_max + 1) if w[m - 1] >= TRUSTED_WEIGHT), default=1)
        gamma = 0.0
        if m_hi >= 2 and w[m_hi - 2] >= TRUSTED_WEIGHT:
            gamma = math.log(out[m_hi - 1] / out[m_hi - 2]) / math.log(m_hi / (m_hi - 1))
            gamma = min(1.0, max(0.0, gamma))
        reach = min(n_max, m_hi + optimism_steps)
        for m in range(m_hi + 1, reach + 1):
            if w[m - 1] < OPTIMISM_MAX_WEIGHT:
                out[m - 1] = min(out[m - 1], out[m_hi - 1] * (m / m_hi) ** gamma)
        m_s = self.saturated_m
        if m_s is not None and n_max > m_s:
            # Past saturation, instances only time-share the device (see the module doc).
            l_s = _interp(tuple(out), m_s)
            for m in range(math.floor(m_s) + 1, n_max + 1):
                out[m - 1] = max(out[m - 1], l_s * m / m_s)
        return tuple(out)

    def peak_rps(self, curve: tuple[float, ...], max_batch: int) -> float:
        """The GPU roofline in items/s (prior: headroom over the best single knob)."""
        if not curve or curve[0] <= 0:
            return self.peak_seen_rps
        batching = 1000.0 * max_batch / (curve[0] * self.law.factor(max_batch))
        mt = max(1000.0 * m / lat for m, lat in enumerate(curve, start=1) if lat > 0)
        return max((1.0 + PEAK_HEADROOM) * max(batching, mt), self.peak_seen_rps)

    def observe(
        self, w: WindowStats, instances: int, now_s: float, memory_s: float, max_batch: int = 0
    ) -> Surface:
        """This surface with one more window (measured under ``instances``, batches of at
        most ``max_batch``) folded in.

        The batch law keeps cells for the small sizes (they set its slope at light load),
        powers of two and ``max_batch``: a batcher runs every size up to its limit, and
        cells for all of them made the fit cost grow with it (80 ms per window at 128).
        """
        stats = [(b, s) for b, s in w.batch_stats.items() if s.count > 0 and s.compute_ms_mean > 0]
        if not stats and w.compute_mean_ms and w.completed > 0:
            # A server without per-batch statistics: its mean compute time, as batch 1.
            stats = [(1, BatchStat(w.completed, w.compute_mean_ms))]
        if not stats:
            return self
        size = max(instances, len(self.bin_w))
        lcells = {q: (cw, cs) for q, cw, cs in self.level_cells}
        cells = {(m, b): (cw, cy) for m, b, cw, cy in self.cells}
        sat_w, sat_sum = self.sat_w, self.sat_sum
        if self.updated_s is not None:
            decay = 0.5 ** (max(0.0, now_s - self.updated_s) / memory_s)
            lcells = {q: (cw * decay, cs * decay) for q, (cw, cs) in lcells.items()}
            cells = {k: (cw * decay, cy * decay) for k, (cw, cy) in cells.items()}
            sat_w, sat_sum = sat_w * decay, sat_sum * decay
        execs = sum(s.count for _, s in stats)
        busy_ms = sum(s.count * s.compute_ms_mean for _, s in stats)
        util = busy_ms / max(1e-6, w.window_s * 1000.0)
        m_seen = 1.0 + min(util, float(instances)) * (instances - 1) / instances
        lo_bin = min(math.floor(m_seen), size)
        frac = m_seen - lo_bin
        # Batch law: this window's batches join the cells of the busy count they saw. A
        # window weighs at most 1, shared by its sizes in proportion to their executions. It
        # counts fully from FULL_WINDOW_BATCHES batches, or from as many as one instance can
        # run in it: a second-scale model runs a few per window, each as good a measurement,
        # and at 1/20 per batch its law never left the prior (DeePVS: batch 2 costs 1.8x
        # batch 1, the prior said 1.3x, so the policy kept batching where instances win).
        full = min(float(FULL_WINDOW_BATCHES), max(1.0, w.window_s * 1000.0 * execs / busy_ms))
        wt = min(1.0, execs / full)
        conf = wt * (1.0 if instances == 1 else CONFOUNDED_WEIGHT) / execs
        quarter = round(4.0 * m_seen)
        for b, st in stats:
            if b > SMALL_SIZES and b & (b - 1) and b != max_batch:
                continue
            cw, cy = cells.get((quarter, b), (0.0, 0.0))
            y = math.log(st.compute_ms_mean)
            cells[(quarter, b)] = (cw + conf * st.count, cy + conf * st.count * y)
        law = _fit_law(cells, self.law)
        norm = busy_ms / sum(s.count * law.factor(b) for b, s in stats)
        # Discount old evidence if this window disagrees with it (interference, SLO moves).
        # Only where there is evidence: a first window at a new busy count disagreeing with
        # the prior's contention is news about the model, not a change of the GPU.
        have = self.bin_w
        near = [m for m in (lo_bin, lo_bin + 1 if frac > 0 else lo_bin) if m <= len(have)]
        measured = len(near) == 2 and all(have[m - 1] >= TRUSTED_WEIGHT for m in near)
        shift_s, shift_ratio = self.shift_s, self.shift_ratio
        if measured:
            expected = self.curve(size)
            exp_m = expected[lo_bin - 1] * (1 - frac) + expected[min(lo_bin, size - 1)] * frac
            if exp_m > 0 and abs(norm / exp_m - 1.0) > SURPRISE and execs >= 10:
                keep = 0.2
                lcells = {q: (cw * keep, cs * keep) for q, (cw, cs) in lcells.items()}
                # The batch law keeps its evidence: interference scales every size alike.
                shift_s, shift_ratio = now_s, norm / exp_m
        busy = w.device_busy_share
        work_device_ms, work_compute_ms = self.work_device_ms, self.work_compute_ms
        if self.updated_s is not None:
            work_device_ms, work_compute_ms = work_device_ms * decay, work_compute_ms * decay
        if busy is not None:
            work_device_ms += busy * w.window_s * 1000.0
            work_compute_ms += busy_ms
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
        lw, ls = lcells.get(quarter, (0.0, 0.0))
        lcells[quarter] = (lw + wt, ls + wt * norm)
        # Items per second actually completed: a lower bound on the roofline.
        seen = sum(b * s.count for b, s in stats) / max(1e-6, w.window_s)
        return replace(
            self,
            updated_s=now_s,
            cells=tuple(
                (m, b, cw, cy) for (m, b), (cw, cy) in sorted(cells.items()) if cw >= CELL_FLOOR
            ),
            law=law,
            level_cells=tuple(
                (q, cw, cs) for q, (cw, cs) in sorted(lcells.items()) if cw >= CELL_FLOOR
            ),
            peak_seen_rps=max(self.peak_seen_rps * (0.5 ** (1.0 / memory_s)), seen),
            sat_w=sat_w,
            sat_sum=sat_sum,
            shift_s=shift_s,
            shift_ratio=shift_ratio,
            work_device_ms=work_device_ms,
            work_compute_ms=work_compute_ms,
        )


def _neighbours(q: int) -> tuple[tuple[int, float], ...]:
    """The integer busy counts around the busy count ``q / 4`` and their interpolation
    shares (one count when ``q / 4`` is an integer)."""
    lo, frac = q // 4, (q % 4) / 4.0
    return ((lo, 1.0 - frac), (lo + 1, frac)) if frac > 0 else ((lo, 1.0),)


def _levels(cells: tuple[tuple[int, float, float], ...], size: int) -> list[float]:
    """``L(m)`` at integer busy counts m = 1..size from windows at fractional ones (0: none).

    A window at ``m = 1.5`` measured the mean of ``L(1)`` and ``L(2)``; averaging it into
    both bins would flatten the curve (each bin takes its neighbours' values), so the levels
    are solved for by least squares on the interpolation, with a weak pull toward the known
    networks' contention shape where windows alone cannot tell neighbours apart.
    """
    out = [0.0] * size
    if not cells:
        return out
    ref = sum(c[2] for c in cells) / sum(c[1] for c in cells)
    touched: set[int] = set()
    for q, cw, _ in cells:
        if cw > 0:
            touched.update(min(m, size) for m, _ in _neighbours(q))
    ms = sorted(touched)
    col = {m: i for i, m in enumerate(ms)}
    rows: list[list[float]] = []
    rhs: list[float] = []
    for q, cw, cs in cells:
        if cw <= 0:
            continue
        r = [0.0] * len(ms)
        sw = math.sqrt(cw) / ref
        for m, share in _neighbours(q):
            r[col[min(m, size)]] += sw * share
        rows.append(r)
        rhs.append(sw * cs / cw)
    mean, _, _ = contention_basis()
    m0 = ms[0]
    for m in ms[1:]:
        r = [0.0] * len(ms)
        k = math.sqrt(LEVEL_PRIOR_WEIGHT) / ref
        r[col[m]] = k
        r[col[m0]] = -k * _interp(mean, m) / _interp(mean, m0)
        rows.append(r)
        rhs.append(0.0)
    coef, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    for m in ms:
        out[m - 1] = max(float(coef[col[m]]), 0.2 * ref)
    return out


def _fit_law(cells: dict[tuple[int, int], tuple[float, float]], prior: BatchLaw) -> BatchLaw:
    """The batch law from the cells: a separable fit ``log c(m, b) = g_b + l(m)``.

    ``l`` is linear between integer busy counts, with ``l(1) = 0``: ``exp(g_b)`` is then the
    compute time of size ``b`` at one busy instance. Busy counts ``m >= 2`` get their own
    level (shrunk toward the known networks' contention), so that multi-instance windows
    teach mostly how sizes compare at the same busy count. Sizes with too little evidence
    are left out; with none, the law stays ``prior``.
    """
    weight: dict[int, float] = {}
    for (_, b), (cw, _) in cells.items():
        weight[b] = weight.get(b, 0.0) + cw
    sizes = sorted(b for b, cw in weight.items() if cw >= KNOT_WEIGHT)
    if not sizes:
        return prior
    levels: set[int] = set()
    for q, b in cells:
        if b in sizes:
            levels.update(m for m, _ in _neighbours(q) if m >= 2)
    col = {b: i for i, b in enumerate(sizes)}
    col.update({-m: len(sizes) + j for j, m in enumerate(sorted(levels))})
    rows: list[list[float]] = []
    rhs: list[float] = []
    for (q, b), (cw, cy) in cells.items():
        if b not in col or cw <= 0:
            continue
        r = [0.0] * len(col)
        sw = math.sqrt(cw)
        r[col[b]] = sw
        for m, share in _neighbours(q):
            if m >= 2:
                r[col[-m]] = sw * share
        rows.append(r)
        rhs.append(cy / sw)  # sqrt(w) * mean log c
    mean, _, _ = contention_basis()
    for m in sorted(levels):
        r = [0.0] * len(col)
        r[col[-m]] = math.sqrt(CONTENTION_PRIOR_WEIGHT)
        rows.append(r)
        rhs.append(math.sqrt(CONTENTION_PRIOR_WEIGHT) * math.log(_interp(mean, m)))
    coef, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    comp = [math.exp(float(coef[col[b]])) for b in sizes]
    for i in range(1, len(comp)):
        comp[i] = max(comp[i], comp[i - 1])  # a bigger batch never computes faster
    # Compute at batch 1: measured, or the first measured piece extended down to it (no
    # cheaper per item than the smallest size measured, no dearer than it in total).
    if sizes[0] == 1:
        c1 = comp[0]
    elif len(sizes) >= 2:
        rise = (comp[1] - comp[0]) / (sizes[1] - sizes[0])
        c1 = min(comp[0], max(comp[0] / sizes[0], comp[0] - rise * (sizes[0] - 1)))
    else:
        c1 = comp[0] / (1.0 + prior.slope * (sizes[0] - 1))
    # Knots at powers of two, and at the largest size if it is well past them: sizes in
    # between (a batcher runs every size up to its limit) only add noise to the table, and
    # a short last piece would make a noisy slope to extrapolate with.
    knots = [(1.0, 1.0)] + [
        (float(b), c / c1) for b, c in zip(sizes, comp, strict=True) if b > 1 and b & (b - 1) == 0
    ]
    if sizes[-1] >= 1.5 * knots[-1][0]:
        knots.append((float(sizes[-1]), comp[-1] / c1))
    if len(knots) >= 2:
        (b0, f0), (b1, f1) = knots[-2], knots[-1]
        w_last = min(weight.get(int(b0), weight[int(b1)]), weight[int(b1)])
        seg = (f1 - f0) / (b1 - b0)
        # Past the table: the slope over the top octave of the sizes run (every size there,
        # not only the knots). Batch 1 often runs another code path (numpy's vector kernel,
        # a launch-bound GPU kernel): wide_mlp's 1 -> 2 piece costs 1.3 per item, its 2 -> 3
        # one 0.2, and extrapolating the first would rule batching out at light load.
        top = [(b, c / c1, weight[b]) for b, c in zip(sizes, comp, strict=True)]
        top = [x for x in top if x[0] >= sizes[-1] / 2.0]
        if len(top) >= 2:
            tw = sum(x[2] for x in top)
            mb = sum(x[0] * x[2] for x in top) / tw
            mf = sum(x[1] * x[2] for x in top) / tw
            var = sum(x[2] * (x[0] - mb) ** 2 for x in top)
            seg = sum(x[2] * (x[0] - mb) * (x[1] - mf) for x in top) / var
        if sizes[-1] <= 2:
            # Light load, batches of 1 and 2 only: the octave is the 1 -> 2 piece, and on
            # the box it alone made the policy leave b16 n1 for b1 n2 on the warm-up ramp.
            # No steeper than the prior until a bigger batch is measured.
            seg = min(seg, ALPHA_PRIOR)
        slope = (w_last * seg + SLOPE_PRIOR_WEIGHT * ALPHA_PRIOR) / (w_last + SLOPE_PRIOR_WEIGHT)
    else:
        slope = prior.slope
    return BatchLaw(tuple(knots), min(MAX_SLOPE, max(0.0, slope)))
