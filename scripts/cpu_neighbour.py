"""A noisy neighbour for experiments on a shared box: burn one core for BURST seconds of
every PERIOD seconds, for TOTAL seconds.

    python scripts/cpu_neighbour.py 0.5 1.0 480   # half a core, 8 minutes

docs/results/convergence.md ran the convergence test next to it (0.3 and 0.5 s of every
second): the test's host column then reads others ~0.3 / ~0.5 CPUs.
"""

from __future__ import annotations

import sys
import time


def main(burst_s: float, period_s: float, total_s: float) -> None:
    end = time.monotonic() + total_s
    while time.monotonic() < end:
        start = time.monotonic()
        while time.monotonic() - start < burst_s:
            pass
        time.sleep(max(0.0, period_s - burst_s))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: cpu_neighbour.py BURST_S PERIOD_S TOTAL_S")
    main(*(float(a) for a in sys.argv[1:]))
