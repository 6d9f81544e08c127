"""TorchServe handler for the demo models, copied into each model archive (standalone).

It runs the *same* model code as Triton's Python backend (``dnnscaler/triton/demo``): the
archive carries that ``model.py`` and ``demo_common.py`` and a ``dnnscaler_model.json``
with the model's parameters. The Triton module imports ``triton_python_backend_utils`` at
its top; only ``execute`` uses it, which this handler never calls, so an empty module
stands in. One call gets the batch TorchServe's batcher formed: the inputs are stacked,
the network runs once, and each request gets its own rows back, as in Triton.

A request's body is its input as raw little-endian float32 bytes (or a JSON list); the
response is the output as raw float32 bytes.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import types
from typing import Any

import numpy as np

_model: Any = None
_input_dims: tuple[int, ...] = ()


def _initialize(context: Any) -> None:
    global _model, _input_dims
    model_dir = context.system_properties.get("model_dir")
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    with open(os.path.join(model_dir, "dnnscaler_model.json")) as fh:
        spec = json.load(fh)
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("pb_utils_unused"))
    module = importlib.import_module("model")
    model = module.TritonPythonModel()
    params = {k: {"string_value": str(v)} for k, v in spec["parameters"].items()}
    model.initialize({"model_config": json.dumps({"parameters": params})})
    _input_dims = tuple(int(d) for d in spec["input_dims"])
    _model = model


def _as_array(row: dict[str, Any]) -> np.ndarray:
    body = row.get("body")
    if body is None:
        body = row.get("data")
    if isinstance(body, (bytes, bytearray)):
        arr = np.frombuffer(bytes(body), dtype="<f4")
    else:
        arr = np.asarray(body, dtype=np.float32).reshape(-1)
    size = int(np.prod(_input_dims))
    if arr.size != size:
        raise ValueError(f"input has {arr.size} float32 values, the model takes {size}")
    return arr.reshape(_input_dims)


def _record_batch(context: Any, size: int, compute_ms: float) -> None:
    """Count the batch in TorchServe's own metrics (declared in the server's metrics config,
    ``dnnscaler.torchserve.launcher.BATCH_METRICS``): per batch size, how many batches and
    their compute time. The agent reads them from ``/metrics`` as Triton's batch statistics.
    """
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    from ts.metrics.dimension import Dimension

    name = context.manifest["model"]["modelName"]
    for metric, value in (("DnnscalerBatches", 1.0), ("DnnscalerBatchComputeMs", compute_ms)):
        dims = [
            Dimension("ModelName", name),
            Dimension("Level", "Model"),
            Dimension("BatchSize", str(size)),
        ]
        metrics.add_counter(metric, value, None, dims)


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """TorchServe's entry point: ``handle(None, ctx)`` once to load, then one call a batch."""
    if data is None:
        _initialize(context)
        return None
    start = time.perf_counter()
    x = np.stack([_as_array(row) for row in data])
    out = np.asarray(_model.forward(x), dtype="<f4")
    answers = [out[i].tobytes() for i in range(len(data))]
    _record_batch(context, len(data), (time.perf_counter() - start) * 1000.0)
    return answers
