"""Near-zero-work model: answers its input. Measures the serving and client overheads."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils
from demo_common import run_batched


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        pass

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32, copy=True)

    def execute(self, requests: list) -> list:
        return run_batched(pb_utils, requests, self.forward)
