"""Batching-heavy demo: a wide MLP whose weights dominate the cost.

At batch 1 each layer streams its whole weight matrix from memory for one input; a batch
of 32 streams the same weights once, so a batch costs little more than one input.
Co-located instances only add the second core (and fight for memory bandwidth).
"""

from __future__ import annotations

import itertools

import numpy as np
import triton_python_backend_utils as pb_utils
from demo_common import parameters, run_batched


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        p = parameters(args)
        d_in = int(p.get("demo.input_dim", "512"))
        hidden = int(p.get("demo.hidden", "2048"))
        layers = int(p.get("demo.layers", "3"))
        d_out = int(p.get("demo.output_dim", "16"))
        rng = np.random.default_rng(int(p.get("demo.seed", "0")))
        dims = [d_in] + [hidden] * layers + [d_out]
        self.weights = [
            (rng.standard_normal((a, b), dtype=np.float32) / np.sqrt(a)).astype(np.float32)
            for a, b in itertools.pairwise(dims)
        ]

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = x.astype(np.float32, copy=False)
        for w in self.weights[:-1]:
            h = np.maximum(h @ w, 0.0)
        return (h @ self.weights[-1]).astype(np.float32)

    def execute(self, requests: list) -> list:
        return run_batched(pb_utils, requests, self.forward)
