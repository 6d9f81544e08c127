"""Telling a run that measured the server's fault (a stall, a death, the server's own
defect) from one that measured the policy, and repeating the former on a fresh server.

Real servers crash or hang under overload (Triton 2.51 with request tracing on, see
docs/triton.md); such a run says nothing about the policy, so it is recorded with its
error and measured again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from dnnscaler.bench.online import WindowRecord
from dnnscaler.bench.records import BenchRecord

STALL_WINDOWS = 5

R = TypeVar("R")


class UpstreamDefectError(RuntimeError):
    """Every failed request of a probe was the server's own defect (``known_defects``): the
    server, not the config or the client, failed it (fresh-clone run 26: INVALID_ARGUMENT
    in the speed probe, one request at a time, no reload under way)."""


class ServerStalled(RuntimeError):
    """The server completed no request for ``STALL_WINDOWS`` windows under load."""


async def with_retries(
    attempt: Callable[[int], Awaitable[tuple[BenchRecord, R]]], retries: int
) -> tuple[BenchRecord, R]:
    """``attempt(1)``, then again (``attempt(2)``, ...) while its record has an ``error``, at
    most ``retries`` more times; the last attempt's result."""
    k = 1
    rec, run = await attempt(k)
    while rec.error and k <= retries:
        k += 1
        rec, run = await attempt(k)
    return rec, run


def server_stall(windows: Sequence[WindowRecord]) -> str | None:
    """A note when the server completed nothing for ``STALL_WINDOWS`` windows or more in a
    row while load was offered (Triton 2.51 hangs this way, see docs/triton.md), else None:
    such a run measures the server's fault, not the policy."""
    run, start = 0, 0.0
    for w in windows:
        if w.rate_rps > 0 and w.completed == 0:
            if run == 0:
                start = w.t_s
            run += 1
            if run >= STALL_WINDOWS:
                return (
                    f"server stalled: no request completed from t={start:.0f}s "
                    f"({sum(1 for x in windows if x.t_s >= start and x.completed == 0)} "
                    f"windows at {w.knobs})"
                )
        else:
            run = 0
    return None


def run_error(
    windows: Sequence[WindowRecord], death_note: str | None, upstream_defect: str | None = None
) -> str | None:
    """Why a finished run measured the server's fault rather than the policy, else None: a
    stall, or the server's death (a crash in a run's last windows is too short for the stall
    rule, yet its failed requests are the server's: run 6, resnet_small), or failed requests
    that were all the server's own defect (``known_defects``)."""
    stall = server_stall(windows)
    if stall is None and death_note:
        return f"server died during the run: {death_note}"
    if stall is None and upstream_defect:
        return f"failed requests were a server defect: {upstream_defect}"
    return stall


def describe_error(exc: BaseException, limit: int = 800) -> str:
    """``Type: message`` on one line (with any notes), at most ``limit`` characters."""
    parts = [str(exc), *getattr(exc, "__notes__", ())]
    text = " | ".join(x.strip() for part in parts for x in part.splitlines() if x.strip())
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= limit else out[: limit - 3] + "..."
