"""GPU identity and telemetry through NVML (nvidia-ml-py).

NVML is initialised once. On a machine without the NVIDIA driver the provider says so in
one log line and reports every reading as absent (``None``), never as zero. Each field is
read separately so that one unsupported query does not lose the others.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import GpuTelemetry

log = get_logger(__name__)


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    uuid: str = ""
    name: str = ""
    memory_total_mb: float | None = None


class NvmlTelemetry:
    """Reads one GPU through NVML; degrades to "unknown" without a driver."""

    def __init__(self, gpu_index: int = 0) -> None:
        self.gpu_index = gpu_index
        self.available = False
        self.reason = ""
        self._nvml: Any = None
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
            self._nvml = pynvml
            self.available = True
        except Exception as e:  # NVMLError_LibraryNotFound on a box without a driver
            self.reason = f"{type(e).__name__}: {e}"
            log.info(
                "nvml_unavailable",
                gpu=gpu_index,
                reason=self.reason,
                effect="GPU telemetry reported as absent",
            )

    def _read(self, fn: str, *args: Any) -> Any:
        if not self.available:
            return None
        try:
            return getattr(self._nvml, fn)(self._handle, *args)
        except Exception as e:
            log.debug("nvml_query_failed", query=fn, error=str(e))
            return None

    def identity(self) -> GpuIdentity:
        name = self._read("nvmlDeviceGetName")
        uuid = self._read("nvmlDeviceGetUUID")
        mem = self._read("nvmlDeviceGetMemoryInfo")
        return GpuIdentity(
            index=self.gpu_index,
            uuid=uuid.decode() if isinstance(uuid, bytes) else (uuid or ""),
            name=name.decode() if isinstance(name, bytes) else (name or ""),
            memory_total_mb=mem.total / 2**20 if mem is not None else None,
        )

    def read(self) -> GpuTelemetry:
        util = self._read("nvmlDeviceGetUtilizationRates")
        mem = self._read("nvmlDeviceGetMemoryInfo")
        power = self._read("nvmlDeviceGetPowerUsage")
        return GpuTelemetry(
            utilization_pct=float(util.gpu) if util is not None else None,
            memory_used_mb=mem.used / 2**20 if mem is not None else None,
            memory_total_mb=mem.total / 2**20 if mem is not None else None,
            power_w=power / 1000.0 if power is not None else None,
        )

    def close(self) -> None:
        if self.available:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self.available = False
