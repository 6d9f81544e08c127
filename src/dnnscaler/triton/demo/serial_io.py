"""Instance-heavy demo: per-input work that does not batch.

Each input needs its own round trip to a device that is mostly idle while it waits (an
under-utilised accelerator, a per-sample sequential decode): modelled by a sleep of
``demo.item_wait_ms`` per input plus ``demo.item_cpu_ms`` of real numpy work per input.
A batch of b costs b times one input, so batching buys nothing; co-located instances
overlap their waits, so throughput grows with the instance count until the CPU work
saturates the cores.
"""

from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils
from demo_common import parameters, run_batched


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        p = parameters(args)
        self.wait_s = float(p.get("demo.item_wait_ms", "10")) / 1000.0
        self.cpu_s = float(p.get("demo.item_cpu_ms", "0.5")) / 1000.0
        rng = np.random.default_rng(int(p.get("demo.seed", "1")))
        d_in = int(p.get("demo.input_dim", "64"))
        self.w = rng.standard_normal((d_in, d_in), dtype=np.float32) / np.sqrt(d_in)

    def _one(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.wait_s)
        h = x.astype(np.float32)
        end = time.perf_counter() + self.cpu_s
        while True:  # sequential steps: each depends on the previous one
            h = np.tanh(h @ self.w)
            if time.perf_counter() >= end:
                return h

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.stack([self._one(row) for row in x]).astype(np.float32)

    def execute(self, requests: list) -> list:
        return run_batched(pb_utils, requests, self.forward)
