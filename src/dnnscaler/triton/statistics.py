"""Per-window statistics from Triton's cumulative ``get_inference_statistics`` counters.

The counters are cumulative per model version and **reset on a full reload** (not on an
in-place instance change). A window is the difference of two snapshots; when any counter
went down the model was reloaded and the later snapshot alone is the window, plus what the
old instances served since the previous snapshot when a reading taken just before the reset
is known (``WindowCounter``: the agent's backend watches the counters while its own reload
runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dnnscaler.core.types import BatchStat


@dataclass(frozen=True)
class Duration:
    count: int = 0
    ns: int = 0

    @staticmethod
    def parse(raw: Mapping[str, Any] | None) -> Duration:
        raw = raw or {}
        return Duration(int(raw.get("count", 0)), int(raw.get("ns", 0)))

    def __add__(self, other: Duration) -> Duration:
        return Duration(self.count + other.count, self.ns + other.ns)

    def __sub__(self, other: Duration) -> Duration:
        return Duration(self.count - other.count, self.ns - other.ns)


@dataclass(frozen=True)
class Cumulative:
    """One snapshot of a model's cumulative statistics (all versions summed)."""

    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute: Duration = Duration()  # input + infer + output, count = executions' requests
    inference_count: int = 0
    execution_count: int = 0
    batches: Mapping[int, Duration] = field(default_factory=dict)  # size -> compute

    @staticmethod
    def parse(model_stats: list[Mapping[str, Any]]) -> Cumulative:
        """From ``get_inference_statistics(name, as_json=True)["model_stats"]``."""
        total = Cumulative()
        for entry in model_stats:
            s = entry.get("inference_stats") or {}
            infer = Duration.parse(s.get("compute_infer"))
            compute = Duration(
                infer.count,
                Duration.parse(s.get("compute_input")).ns
                + infer.ns
                + Duration.parse(s.get("compute_output")).ns,
            )
            batches: dict[int, Duration] = dict(total.batches)
            for b in entry.get("batch_stats") or []:
                size = int(b.get("batch_size", 0))
                b_infer = Duration.parse(b.get("compute_infer"))
                b_dur = Duration(
                    b_infer.count,
                    Duration.parse(b.get("compute_input")).ns
                    + b_infer.ns
                    + Duration.parse(b.get("compute_output")).ns,
                )
                batches[size] = batches.get(size, Duration()) + b_dur
            total = Cumulative(
                success=total.success + Duration.parse(s.get("success")),
                fail=total.fail + Duration.parse(s.get("fail")),
                queue=total.queue + Duration.parse(s.get("queue")),
                compute=total.compute + compute,
                inference_count=total.inference_count + int(entry.get("inference_count", 0)),
                execution_count=total.execution_count + int(entry.get("execution_count", 0)),
                batches=batches,
            )
        return total

    def went_back_from(self, prev: Cumulative) -> bool:
        """Whether a counter decreased since ``prev`` (the model was reloaded)."""
        return (
            self.success.count < prev.success.count
            or self.fail.count < prev.fail.count
            or self.execution_count < prev.execution_count
            or self.queue.count < prev.queue.count
        )

    def minus(self, prev: Cumulative | None) -> Cumulative:
        """The window ``prev`` → ``self`` (``self`` alone after a reset)."""
        if prev is None or self.went_back_from(prev):
            return self
        batches = {}
        for size, dur in self.batches.items():
            d = dur - prev.batches.get(size, Duration())
            if d.count > 0:
                batches[size] = d
        return Cumulative(
            success=self.success - prev.success,
            fail=self.fail - prev.fail,
            queue=self.queue - prev.queue,
            compute=self.compute - prev.compute,
            inference_count=self.inference_count - prev.inference_count,
            execution_count=self.execution_count - prev.execution_count,
            batches=batches,
        )

    def plus(self, other: Cumulative) -> Cumulative:
        """Both windows' requests together: the old instances' last window before a reload
        and the new ones' first."""
        batches = dict(self.batches)
        for size, dur in other.batches.items():
            batches[size] = batches.get(size, Duration()) + dur
        return Cumulative(
            success=self.success + other.success,
            fail=self.fail + other.fail,
            queue=self.queue + other.queue,
            compute=self.compute + other.compute,
            inference_count=self.inference_count + other.inference_count,
            execution_count=self.execution_count + other.execution_count,
            batches=batches,
        )

    def batch_stats(self) -> dict[int, BatchStat]:
        return {
            size: BatchStat(count=d.count, compute_ms_mean=d.ns / d.count / 1e6)
            for size, d in sorted(self.batches.items())
            if d.count > 0
        }

    def mean_ms(self, which: Duration) -> float | None:
        return which.ns / which.count / 1e6 if which.count > 0 else None


@dataclass
class WindowCounter:
    """One model's requests per window, across any number of counter resets.

    Every statistics reading goes through ``saw`` (the agent's observation and the reads
    taken while a reload of ours runs), in the order the server answered them. A reading
    below the one before it starts a new generation of counters: what the ended generation
    served since the window began is carried into the window. Without the carry a window
    that held two resets (one reload ending just before the next began, the second not yet
    observed) lost the whole first generation: an agent window with 0 requests while the
    client saw 187 (fresh clone 67, ``bench reloads``).
    """

    base: Cumulative | None = None  # the current generation's count at the window's start
    last: Cumulative | None = None  # its latest reading
    carried: Cumulative = field(default_factory=Cumulative)  # ended generations' share
    resets: int = 0  # resets seen in this window

    def saw(self, cum: Cumulative) -> None:
        """Take one reading; a drop from the latest one is a reset."""
        if self.base is None or self.last is None:
            self.base = self.last = cum
            return
        if cum.went_back_from(self.last):
            self.carried = self.carried.plus(self.last.minus(self.base))
            self.base = Cumulative()
            self.resets += 1
        self.last = cum

    def take(self, cum: Cumulative) -> tuple[Cumulative | None, int]:
        """The window ending at ``cum`` and the resets in it, then start the next window;
        ``None`` for the first reading (a baseline: no window yet)."""
        if self.base is None:
            self.base = self.last = cum
            return None, 0
        self.saw(cum)
        assert self.base is not None
        window = self.carried.plus(cum.minus(self.base))
        resets = self.resets
        self.base = self.last = cum
        self.carried = Cumulative()
        self.resets = 0
        return window, resets

    @property
    def started(self) -> bool:
        return self.base is not None
