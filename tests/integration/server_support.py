"""What a test that used a real Triton says when the server died or hung under it, and how
it goes on: the server's state and log tail, a fresh start, one more attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from dnnscaler.core.types import Knobs
from dnnscaler.triton.launcher import LocalTriton
from dnnscaler.triton.model_config import knobs_from_config


def server_state(server: LocalTriton, lines: int = 40) -> str:
    """Whether the server runs (or how it exited), and its log's last lines."""
    if server.running():
        state = f"running (pid {server.pid})"
    elif server.returncode is not None:
        state = f"exited with code {server.returncode} (pid {server.pid})"
    else:
        state = "not started"
    where = server.log_path if server.workdir is not None else "(none)"
    return f"tritonserver {state}; log {where}, last {lines} lines:\n{server.log_tail(lines)}"


def restart(server: LocalTriton) -> str:
    """Start a server that died again (fresh ports); returns what it was like when it died."""
    died = server_state(server)
    server.stop()
    server.start()
    return died


class UpstreamDefect(AssertionError):
    """Every failed request was Triton's own defect (``dnnscaler.triton.known_defects``)."""


async def once_more_if_the_server_failed(
    server: LocalTriton, request: pytest.FixtureRequest, body: Callable[[], Awaitable[None]]
) -> None:
    """Run ``body``; if it fails because the server died or hung under it (the Triton 2.51
    tracing crash and hang: a process that runs but does not answer its liveness check),
    or raises ``UpstreamDefect``, say so in the report and the JUnit file, start the
    server again if it died, and run it once more. A second failure, or any other failure
    with the server alive, is the test's failure."""
    try:
        await body()
        return
    except UpstreamDefect as exc:
        why = f"server defect: {exc}"[:2000]
        request.node.user_properties.append(("attempt_1_not_judged", why))
        print(f"attempt 1 could not be judged ({why}); {server_state(server)}")
        if not server.running():
            restart(server)
    except Exception as exc:  # only a dead or hung server makes it a retry
        if await asyncio.to_thread(server.answers):
            raise
        hung = server.running()
        died = restart(server)
        why = f"{type(exc).__name__}: {exc}"[:2000]
        what = "triton_hung_first_attempt" if hung else "triton_crashed_first_attempt"
        request.node.user_properties.append((what, f"{why}\n{died}"))
        how = "hung (running, its liveness check unanswered for 10 s)" if hung else "died"
        print(f"attempt 1 could not be judged, the server {how} under it ({why}); {died}")
    await body()


def read_back(server: LocalTriton, model: str) -> Knobs:
    """The knobs in force, read by a client of the test's own (not the agent's backend)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return knobs_from_config(client.get_model_config(model, as_json=True)["config"])
    finally:
        client.close()
