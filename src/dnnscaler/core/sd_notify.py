"""systemd's notify protocol (``Type=notify``): the few lines of it, no library.

A datagram of ``KEY=VALUE`` lines to the socket in ``$NOTIFY_SOCKET`` (a path, or an
abstract name starting with ``@``). Outside systemd the variable is unset and every call is
a no-op. ``READY=1`` once serving, ``STOPPING=1`` when the shutdown begins, ``WATCHDOG=1``
at half of ``$WATCHDOG_USEC`` while the event loop turns (a hung loop stops it, and systemd
restarts the unit).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from dnnscaler.core.logging import get_logger

log = get_logger(__name__)


def notify(*lines: str) -> bool:
    """Send ``lines`` to systemd; False when not under systemd (or the send failed)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall("\n".join(lines).encode())
    except OSError as e:
        log.warning("sd_notify_failed", socket=address, error=str(e))
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asked for, or None without one."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Notifier:
    """READY with a status line, then the watchdog pings until ``stopping()``."""

    def __init__(self) -> None:
        self._pinger: asyncio.Task[None] | None = None

    def ready(self, status: str) -> None:
        notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        interval = watchdog_interval_s()
        if interval is not None and self._pinger is None:
            self._pinger = asyncio.create_task(self._ping(interval))

    async def _ping(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stopping(self, status: str = "stopping") -> None:
        notify("STOPPING=1", f"STATUS={status}")
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
