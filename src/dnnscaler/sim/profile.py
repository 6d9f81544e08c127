"""Latency profiles of DNNs on one GPU: the ground truth the simulated server samples from.

Batching model (documented in docs/sim.md). ``lat_k_ms[k-1]`` is the measured mean latency of
one batch-1 request with ``k`` co-located instances all busy. A batch of ``b`` with ``k`` busy
instances takes::

    latency_ms(b, k) = max(lat_k_ms[k-1] * (1 + batch_alpha * (b - 1)),  k * b / peak_rate)

The first term is the linear batching law (each extra sample in a batch costs a fraction
``batch_alpha`` of the batch-1 latency; calibrated from published latency-vs-batch tables) scaled
by the measured contention of ``k`` instances. The second term is a throughput roofline: the GPU
cannot process more than ``peak_rate`` samples per ms, set ``hybrid_headroom`` above the best
single-knob throughput (pure batching or pure multi-tenancy), so that mixing both knobs can gain at
most that headroom. At ``b = 1`` or ``k = 1`` the roofline never binds, so the measured rows and the
batching law are reproduced exactly.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dnnscaler.core.types import KnobLimits

# Published latency-vs-batch calibration: batching slope per network family (see docs/sim.md).
FAMILY_BATCH_ALPHA: dict[str, float] = {
    "Inc": 0.085,  # GoogLeNet, TensorRT INT8 on P40 (Dell HPC white paper)
    "Mob-V1": 0.62,  # MobileNetV1, TensorRT FP32 on T4 (Paddle Inference GPU benchmark)
    "Mob-V2": 0.51,  # MobileNetV2, TensorRT FP32 on T4 (Paddle Inference GPU benchmark)
    "NAS": 0.51,  # assumed like MobileNetV2 (separable-conv mobile nets); no published table
    "PNAS": 0.51,  # assumed like MobileNetV2
    "Res": 0.25,  # ResNet-50, TensorRT FP32 on V100 (public gist, TensorRT 4)
    "DeePVS": 0.8,  # assumed: video saliency nets already fill the GPU at batch 1
}

DEFAULT_SLO_FACTOR = 5.0  # default SLO = this x batch-1 latency with one instance


class ProfileError(ValueError):
    """A profile file is malformed; the message names the file, the profile/row and the field."""


@dataclass(frozen=True)
class Profile:
    """Mean service times of one network on one GPU, with the knobs it can take."""

    name: str
    lat_k_ms: tuple[float, ...]
    batch_alpha: float
    max_batch_size: int = 128
    hybrid_headroom: float = 0.1
    jitter_cv: float = 0.05
    instance_memory_mb: float | None = None
    gpu_memory_mb: float | None = None
    slo_ms: float | None = None
    source: str = ""
    _lat: tuple[tuple[float, ...], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self)
        peak = self.peak_rate_per_ms
        table = tuple(
            tuple(
                max(lk * (1.0 + self.batch_alpha * (b - 1)), k * b / peak)
                for k, lk in enumerate(self.lat_k_ms, start=1)
            )
            for b in range(1, self.max_batch_size + 1)
        )
        object.__setattr__(self, "_lat", table)

    @property
    def max_instances(self) -> int:
        """Instances that fit: the measured table's length, bounded by GPU memory."""
        k = len(self.lat_k_ms)
        if self.instance_memory_mb and self.gpu_memory_mb:
            k = min(k, math.floor(self.gpu_memory_mb / self.instance_memory_mb + 1e-9))
        return max(1, k)

    @property
    def peak_rate_per_ms(self) -> float:
        """The GPU's roofline in samples per ms (see the module docstring)."""
        lat1 = self.lat_k_ms[0]
        mt = max(k / lk for k, lk in enumerate(self.lat_k_ms, start=1))
        bmax = self.max_batch_size
        batching = bmax / (lat1 * (1.0 + self.batch_alpha * (bmax - 1)))
        return (1.0 + self.hybrid_headroom) * max(mt, batching)

    @property
    def default_slo_ms(self) -> float:
        return self.slo_ms if self.slo_ms is not None else DEFAULT_SLO_FACTOR * self.lat_k_ms[0]

    def latency_ms(self, batch: int, busy_instances: int) -> float:
        """Mean service time of one batch of ``batch`` with ``busy_instances`` running."""
        if not 1 <= batch <= self.max_batch_size:
            raise ValueError(f"{self.name}: batch {batch} outside 1..{self.max_batch_size}")
        if not 1 <= busy_instances <= len(self.lat_k_ms):
            raise ValueError(
                f"{self.name}: busy_instances {busy_instances} outside 1..{len(self.lat_k_ms)}"
            )
        return self._lat[batch - 1][busy_instances - 1]

    def latency_table(self) -> tuple[tuple[float, ...], ...]:
        """``table[b-1][k-1]`` = ``latency_ms(b, k)``; for hot loops."""
        return self._lat

    def throughput_rps(self, batch: int, instances: int) -> float:
        """Saturated throughput of a config: ``instances * batch / latency``."""
        return 1000.0 * instances * batch / self.latency_ms(batch, instances)

    def limits(self, max_queue_delay_us: int = 100_000) -> KnobLimits:
        return KnobLimits(
            max_batch_size=self.max_batch_size,
            max_instances=self.max_instances,
            max_queue_delay_us=max_queue_delay_us,
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_lat")
        d["lat_k_ms"] = list(self.lat_k_ms)
        return d


def _check(p: Profile) -> None:
    where = f"profile {p.name!r}"
    if not p.name:
        raise ProfileError("name: must be a non-empty string")
    if len(p.lat_k_ms) == 0:
        raise ProfileError(f"{where}: lat_k_ms: empty latency table")
    for i, v in enumerate(p.lat_k_ms, start=1):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ProfileError(f"{where}: lat_k_ms[k={i}]: must be > 0, got {v!r}")
    if not (math.isfinite(p.batch_alpha) and 0 <= p.batch_alpha <= 10):
        raise ProfileError(f"{where}: batch_alpha: must be in [0, 10], got {p.batch_alpha!r}")
    if not (isinstance(p.max_batch_size, int) and 1 <= p.max_batch_size <= 4096):
        raise ProfileError(f"{where}: max_batch_size: must be in 1..4096, got {p.max_batch_size!r}")
    if not 0 <= p.hybrid_headroom <= 10:
        raise ProfileError(f"{where}: hybrid_headroom: must be in [0, 10]")
    if not 0 <= p.jitter_cv <= 2:
        raise ProfileError(f"{where}: jitter_cv: must be in [0, 2], got {p.jitter_cv!r}")
    for fname in ("instance_memory_mb", "gpu_memory_mb", "slo_ms"):
        v = getattr(p, fname)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ProfileError(f"{where}: {fname}: must be > 0 or null, got {v!r}")


_FIELDS = {
    "name": str,
    "lat_k_ms": list,
    "batch_alpha": (int, float),
    "max_batch_size": int,
    "hybrid_headroom": (int, float),
    "jitter_cv": (int, float),
    "instance_memory_mb": (int, float, type(None)),
    "gpu_memory_mb": (int, float, type(None)),
    "slo_ms": (int, float, type(None)),
    "source": str,
}
_REQUIRED = ("name", "lat_k_ms", "batch_alpha")


def profile_from_dict(d: Mapping[str, Any], where: str) -> Profile:
    """Build a profile from a JSON object; errors name ``where`` and the field."""
    if not isinstance(d, Mapping):
        raise ProfileError(f"{where}: must be an object, got {type(d).__name__}")
    for f in _REQUIRED:
        if f not in d:
            raise ProfileError(f"{where}: {f}: missing required field")
    for k, v in d.items():
        if k not in _FIELDS:
            raise ProfileError(f"{where}: {k}: unknown field; valid: {', '.join(_FIELDS)}")
        if isinstance(v, bool) or not isinstance(v, _FIELDS[k]):  # type: ignore[arg-type]
            raise ProfileError(f"{where}: {k}: wrong type {type(v).__name__}")
    lat = d["lat_k_ms"]
    for i, v in enumerate(lat, start=1):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProfileError(f"{where}: lat_k_ms[k={i}]: not a number: {v!r}")
    kwargs = dict(d)
    kwargs["lat_k_ms"] = tuple(float(v) for v in lat)
    try:
        return Profile(**kwargs)
    except ProfileError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def load_profiles(path: str | Path) -> dict[str, Profile]:
    """Profiles from a JSON file holding a list of profile objects, by name."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ProfileError(f"{p}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, list) or not data:
        raise ProfileError(f"{p}: must hold a non-empty list of profiles")
    out: dict[str, Profile] = {}
    for i, d in enumerate(data):
        name = d.get("name") if isinstance(d, dict) else None
        where = f"{p}: profile #{i}" + (f" ({name!r})" if name else "")
        prof = profile_from_dict(d, where)
        if prof.name in out:
            raise ProfileError(f"{where}: name: duplicate profile name {prof.name!r}")
        out[prof.name] = prof
    return out


def save_profiles(profiles: Iterable[Profile], path: str | Path) -> None:
    Path(path).write_text(json.dumps([p.to_json() for p in profiles], indent=2) + "\n")


def family_alpha(dnn: str) -> float:
    """The calibrated batching slope for a network name from the CSV (longest prefix wins)."""
    best = ""
    for fam in FAMILY_BATCH_ALPHA:
        if dnn.startswith(fam) and len(fam) > len(best):
            best = fam
    if not best:
        raise KeyError(f"no batching calibration for network {dnn!r}")
    return FAMILY_BATCH_ALPHA[best]


def profiles_from_csv(path: str | Path, source: str = "") -> dict[str, Profile]:
    """Profiles from a ``dataset,dnn,k1..kK`` CSV of batch-1 latencies (ms)."""
    p = Path(path)
    out: dict[str, Profile] = {}
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        kcols = [c for c in cols if c.startswith("k")]
        if "dataset" not in cols or "dnn" not in cols or not kcols:
            raise ProfileError(f"{p}: header must be dataset,dnn,k1..kK; got {cols}")
        for row_no, row in enumerate(reader, start=2):
            name = f"{row['dataset']}/{row['dnn']}"
            lat = []
            for c in kcols:
                try:
                    lat.append(float(row[c]))
                except (TypeError, ValueError):
                    raise ProfileError(f"{p}: row {row_no} ({name}): {c}: not a number") from None
            try:
                alpha = family_alpha(row["dnn"])
            except KeyError as exc:
                raise ProfileError(f"{p}: row {row_no} ({name}): dnn: {exc}") from None
            big = row["dnn"] == "DeePVS"
            try:
                out[name] = Profile(
                    name=name,
                    lat_k_ms=tuple(lat),
                    batch_alpha=alpha,
                    max_batch_size=8 if big else 128,
                    jitter_cv=0.1 if big else 0.05,
                    source=source,
                )
            except ProfileError as exc:
                raise ProfileError(f"{p}: row {row_no}: {exc}") from None
    if not out:
        raise ProfileError(f"{p}: no rows")
    return out


def stress_profiles() -> dict[str, Profile]:
    """Synthetic profiles that stress the policies (see docs/sim.md)."""
    ps = [
        # (a) batching wins at the default (loose) SLO, instances win at half of it.
        Profile(
            name="synthetic/batch-vs-mt",
            lat_k_ms=(10.0, 10.3, 10.8, 11.5, 16.0, 22.0, 28.0, 34.0, 40.0, 46.0),
            batch_alpha=0.12,
            max_batch_size=64,
            slo_ms=40.0,
            source="synthetic",
        ),
        # (b) latency not monotone in the instance count (like the MobileNet rows).
        Profile(
            name="synthetic/non-monotone",
            lat_k_ms=(8.0, 6.5, 5.5, 7.0, 5.0, 6.0, 8.5, 10.0, 11.5, 13.0),
            batch_alpha=0.6,
            max_batch_size=32,
            source="synthetic",
        ),
        # (c) multi-tenancy friendly but only 3 instances fit in GPU memory.
        Profile(
            name="synthetic/memory-bound",
            lat_k_ms=(6.0, 6.2, 6.5, 6.9, 7.4, 8.0, 8.7, 9.5, 10.4, 11.4),
            batch_alpha=0.35,
            max_batch_size=32,
            instance_memory_mb=5000.0,
            gpu_memory_mb=16000.0,
            source="synthetic",
        ),
        # (d) a large video model with second-scale latency.
        Profile(
            name="synthetic/video-large",
            lat_k_ms=(1500.0, 1700.0, 2100.0, 2600.0, 3200.0, 3900.0),
            batch_alpha=0.7,
            max_batch_size=8,
            jitter_cv=0.1,
            instance_memory_mb=6000.0,
            gpu_memory_mb=40000.0,
            source="synthetic",
        ),
    ]
    return {p.name: p for p in ps}


CSV_SOURCE = "DNNScaler authors' measurements (arXiv:2308.13803), batch 1, k = 1..10"


def shipped_profiles() -> dict[str, Profile]:
    """Every row of the packaged ``mt_latency_ms.csv`` plus the synthetic stress profiles."""
    ref = resources.files("dnnscaler.sim").joinpath("profiles/mt_latency_ms.csv")
    with resources.as_file(ref) as path:
        out = profiles_from_csv(path, source=CSV_SOURCE)
    out.update(stress_profiles())
    return out
