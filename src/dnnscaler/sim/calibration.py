"""Published latency-vs-batch measurements that calibrate the batching law of the profiles.

The CSV of the DNNScaler authors covers batch 1 only. The slope ``batch_alpha`` of
``latency(b) = latency(1) * (1 + alpha * (b - 1))`` comes from these public GPU measurements
(least squares on the relative error); ``docs/sim.md`` prints the resulting error table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchSeries:
    """Mean latency (ms) of one network at several batch sizes on one GPU, with its source."""

    family: str
    network: str
    setup: str
    source_title: str
    source_url: str
    latency_ms: dict[int, float]


def _from_throughput(ips: dict[int, float]) -> dict[int, float]:
    return {b: 1000.0 * b / v for b, v in ips.items()}


SERIES: tuple[BatchSeries, ...] = (
    BatchSeries(
        family="Res",
        network="ResNet-50",
        setup="TensorRT 4.0 FP32, V100",
        source_title="TensorRT Performance on NVIDIA Volta V100 GPU (gist by 1duo)",
        source_url="https://gist.github.com/1duo/efd3be1dc8eb2c45863b75f20a76f8b2",
        latency_ms={
            1: 2.67725,
            2: 4.08289,
            4: 6.08236,
            8: 8.27648,
            16: 13.0539,
            32: 23.1328,
            64: 42.5329,
            128: 80.5629,
        },
    ),
    BatchSeries(
        family="Inc",
        network="GoogLeNet (Inception-V1)",
        setup="TensorRT INT8, Tesla P40 (throughput, images/s)",
        source_title="Dell EMC HPC white paper: deep learning inference on P40 GPUs, Figure 6",
        source_url="http://38.142.81.21:8001/manual/dell/high-performance-computing-solution-resources/6-5-4-3-2-1-white-papers-english/page-5.html",
        latency_ms=_from_throughput({1: 594.0, 32: 5417.0, 64: 6059.0, 128: 6410.0}),
    ),
    BatchSeries(
        family="Mob-V1",
        network="MobileNetV1",
        setup="Paddle Inference + TensorRT 8.0 FP32, T4",
        source_title="Paddle Inference GPU benchmark (benchmark_gpu)",
        source_url="https://paddlepaddle.org.cn/inference/guides/benchmark/benchmark_gpu.html",
        latency_ms={1: 0.8737, 2: 1.4106, 4: 2.5238},
    ),
    BatchSeries(
        family="Mob-V2",
        network="MobileNetV2",
        setup="Paddle Inference + TensorRT 8.0 FP32, T4",
        source_title="Paddle Inference GPU benchmark (benchmark_gpu)",
        source_url="https://paddlepaddle.org.cn/inference/guides/benchmark/benchmark_gpu.html",
        latency_ms={1: 1.1125, 2: 1.6682, 4: 2.819},
    ),
    BatchSeries(
        family="Res",
        network="ResNet-50",
        setup="Paddle Inference + TensorRT 8.0 FP32, T4",
        source_title="Paddle Inference GPU benchmark (benchmark_gpu)",
        source_url="https://paddlepaddle.org.cn/inference/guides/benchmark/benchmark_gpu.html",
        latency_ms={1: 3.5244, 2: 5.2147, 4: 9.3702},
    ),
)


def fit_alpha(series: BatchSeries) -> float:
    """Least-squares slope on relative latency: minimise sum((model/measured - 1)^2)."""
    l1 = series.latency_ms[1]
    num = den = 0.0
    for b, lat in series.latency_ms.items():
        if b == 1:
            continue
        x = l1 * (b - 1) / lat  # model/measured = l1/lat + alpha * x
        y = 1.0 - l1 / lat
        num += x * y
        den += x * x
    return num / den


def relative_errors(series: BatchSeries, alpha: float) -> dict[int, float]:
    """(model - measured) / measured per batch size."""
    l1 = series.latency_ms[1]
    return {b: l1 * (1 + alpha * (b - 1)) / lat - 1.0 for b, lat in series.latency_ms.items()}
