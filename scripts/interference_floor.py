"""What the `interference` scenario of `bench sim` allows at best: every static config's
violation rate in its interference phase (the device 1.5x slower, the scenario's load of
0.5 x the oracle's capacity), per profile.

usage: python scripts/interference_floor.py RESULTS_JSON [--seed N]

RESULTS_JSON is a `bench sim` results.json (for the oracle's capacity and knobs). Prints,
per profile, the four best static configs and the oracle's config, then the mean over
profiles of the best one: no controller that only sets these knobs does better on average.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from dnnscaler.bench import sim_bench as sb
from dnnscaler.core.types import Knobs
from dnnscaler.policies.dnnscaler_policy import batch_grid
from dnnscaler.policies.static import StaticPolicy
from dnnscaler.sim.profile import shipped_profiles


def floor(args: tuple[dict[str, Any], int]) -> tuple[str, list[tuple[float, int, int]], float]:
    rec, seed = args
    prof = shipped_profiles()[rec["model"]]
    cfg = sb.SimBenchConfig(seed=seed)
    slo = cfg.slo_for(prof)
    rate = cfg.interference_load * rec["oracle_capacity_rps"]
    out = []
    for n in range(1, prof.max_instances + 1):
        for b in batch_grid(prof.max_batch_size):
            knobs = Knobs(b, n, 0)
            res, _ = sb._scenario(
                prof,
                StaticPolicy(knobs),
                name="interference-floor",
                rate_at=lambda i: rate,
                slo_at=lambda i: slo,
                windows=cfg.phase_windows,
                changes=(0,),
                window_s=cfg.window_for(prof),
                seed=sb._seed(cfg, prof, "interference"),
                rate=rate,
                initial_knobs=knobs,
                interference_at=lambda i: cfg.interference,
            )
            out.append((res.violation_rate, b, n))
    out.sort()
    ok = rec["oracle_knobs"]
    oracle = next(v for v, b, n in out if (b, n) == (ok["max_batch_size"], ok["instances"]))
    return rec["model"], out, oracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with open(args.results) as fh:
        recs = [r for r in json.load(fh)["records"] if r["policy"] == "oracle"]
    bests, oracles = [], []
    with ProcessPoolExecutor(2) as ex:
        for model, out, oracle in ex.map(floor, [(r, args.seed) for r in recs]):
            top = " ".join(f"b{b}n{n}:{v:.2f}" for v, b, n in out[:4])
            print(f"{model:26s} best {top}   oracle's config {oracle:.2f}")
            bests.append(out[0][0])
            oracles.append(oracle)
    print(
        f"mean over {len(bests)} profiles: best static config {statistics.mean(bests):.3f},"
        f" the oracle's config {statistics.mean(oracles):.3f} (share of interference windows)"
    )


if __name__ == "__main__":
    main()
