"""Predicted tail latency and SLO capacity of a config, from the learned latency surface.

Compute time of a batch of ``B`` with ``n`` instances busy is ``c(B) = L_n * f(B)``
(``L_n`` the batch-1 latency under ``n``-way contention, ``f`` the batch law: piecewise
linear through the measured sizes, ``batch_law``). Two
regimes, and the prediction takes the better one (the batcher only forms batches when it
helps, i.e. when requests queue):

- **Single requests** (light load or ``max_batch_size == 1``): an ``M/G/n`` queue with
  service ``L_n``; Kingman-Sakasegawa wait with an exponential tail,
  ``P(wait) ~ rho^(sqrt(2(n+1))-1)``, ``E[wait | wait] ~ (1 + cs2)/2 * L_n / (n (1-rho))``.
- **Always-busy batcher**: each dispatch takes what queued during the last dispatch interval,
  so the mean batch solves ``B = lam c(B) / n`` (``BatchLaw.fixed_point``).
  The batch-size map has gain ``g = lam c'(B) / n``; Poisson fluctuations of ``B`` are
  amplified to ``sigma = sqrt(B / (1 - g^2))``. A request waits for the next dispatch
  (``c(B)/n``) and then for its batch, whose size is at most ``B + z sigma`` at the tail.

The capacity of a config is the largest load whose predicted tail stays under a bound
(bisection). It ranks configs and sets targets; the policy's feedback guard corrects it.
"""

from __future__ import annotations

import math

from dnnscaler.policies.batch_law import BatchLaw

WAIT_TAIL = 0.1  # residual-wait quantile used with the batch-size tail
SERVICE_CV2 = 0.01  # squared coefficient of variation of compute times (~5 % jitter)
BISECTION_STEPS = 11  # capacity to 0.05 % of the saturation rate
_Z = ((0.9, 1.28), (0.95, 1.64), (0.99, 2.33), (0.999, 3.09))


def z_score(quantile: float) -> float:
    """Normal quantile for the usual SLO percentiles (nearest tabulated, conservative)."""
    for q, z in _Z:
        if quantile <= q + 1e-9:
            return z
    return _Z[-1][1]


def _single_tail(lam: float, n: int, c: float, tail: float) -> float:
    rho = lam * c / n
    if rho >= 0.999:
        return math.inf
    if rho <= 0:
        return c
    p_wait = rho ** (math.sqrt(2.0 * (n + 1)) - 1.0)
    if p_wait <= tail:
        return c
    cond_wait = (1.0 + SERVICE_CV2) / 2.0 * c / (n * (1.0 - rho))
    return c + cond_wait * math.log(p_wait / tail)


def _compute(b: float, n: int, lat_ms: float, law: BatchLaw, peak_per_ms: float) -> float:
    measured = lat_ms * law.factor(b)
    return max(measured, n * b / peak_per_ms) if peak_per_ms > 0 else measured


def predicted_tail_ms(
    lam_rps: float,
    n: int,
    max_batch: int,
    lat_ms: float,
    law: BatchLaw,
    quantile: float,
    peak_rps: float = 0.0,
) -> float:
    """Predicted ``quantile`` (0..1) of end-to-end latency at load ``lam_rps``.

    ``peak_rps`` (0: none) is the GPU's throughput roofline: a batch never runs faster than
    ``n * B / peak``, whatever the affine law says.
    """
    lam = max(0.0, lam_rps) / 1000.0
    peak = peak_rps / 1000.0
    tail = 1.0 - quantile
    single = _single_tail(lam, n, _compute(1.0, n, lat_ms, law, peak), tail)
    if max_batch <= 1:
        return single
    if peak > 0 and lam >= 0.999 * peak:
        return single
    # Smallest fixed point of B = lam c(B) / n. Below the roofline (lam < peak) it lies where
    # the batch law holds, so it is solved piece by piece.
    fixed = law.fixed_point(lam * lat_ms / n)
    if fixed is None or fixed >= max_batch:
        return single
    b = fixed
    c = _compute(b, n, lat_ms, law, peak)
    db = max(1e-3, 0.02 * b)
    g = lam * (_compute(b + db, n, lat_ms, law, peak) - c) / db / n
    if g >= 0.999:
        return single
    z = z_score(quantile)
    b_hi = b + z * math.sqrt(b / (1.0 - g * g))
    for _ in range(3):
        # The map is steeper where the roofline binds: use its mean slope over [B, B_hi].
        span = min(b_hi, 4.0 * max_batch) - b
        g = max(g, lam * (_compute(b + span, n, lat_ms, law, peak) - c) / span / n)
        if g >= 0.999:
            return single
        b_hi = b + z * math.sqrt(b / (1.0 - g * g))
    # Wait for the next free instance: the minimum of n residual batch times, at a high
    # quantile (the instances' phases are random, not staggered).
    wait = c * (1.0 - WAIT_TAIL ** (1.0 / n))
    if b_hi <= max_batch:
        batched = wait + _compute(b_hi, n, lat_ms, law, peak)
    else:
        c_max = _compute(float(max_batch), n, lat_ms, law, peak)
        extra = math.ceil((b_hi - max_batch) / max_batch)
        batched = wait + c_max * (1.0 + extra / n)
    return min(single, batched)


def capacity_rps(
    n: int,
    max_batch: int,
    lat_ms: float,
    law: BatchLaw,
    bound_ms: float,
    quantile: float,
    peak_rps: float = 0.0,
) -> float:
    """Largest load whose predicted tail stays within ``bound_ms`` (0 if none)."""
    if lat_ms <= 0 or lat_ms > bound_ms:
        return 0.0
    peak = peak_rps / 1000.0
    sat = 1000.0 * n * max_batch / _compute(float(max_batch), n, lat_ms, law, peak)
    sat = max(sat, 1000.0 * n / lat_ms)
    lo, hi = 0.0, sat
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if predicted_tail_ms(mid, n, max_batch, lat_ms, law, quantile, peak_rps) <= bound_ms:
            lo = mid
        else:
            hi = mid
    return lo
