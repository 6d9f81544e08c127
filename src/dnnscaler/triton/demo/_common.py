"""Helpers shared by the demo models, copied next to each ``model.py`` as ``demo_common.py``.

A demo model concatenates the requests Triton hands it (the dynamic batcher groups them),
runs one forward pass and splits the result, so a batch costs what the network costs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """The model config's ``parameters`` as plain strings."""
    cfg = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}


def run_batched(
    pb_utils: Any, requests: list[Any], forward: Callable[[np.ndarray], np.ndarray]
) -> list[Any]:
    """Run ``forward`` once over all requests' INPUT0 and answer each with its OUTPUT0."""
    arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
    sizes = [a.shape[0] for a in arrays]
    out = forward(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
    responses = []
    offset = 0
    for n in sizes:
        tensor = pb_utils.Tensor("OUTPUT0", np.ascontiguousarray(out[offset : offset + n]))
        responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        offset += n
    return responses
