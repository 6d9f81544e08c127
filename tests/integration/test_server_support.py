"""The real-server tests' retry rule, on a stand-in for ``LocalTriton`` (no server needed:
only the rule's decision is under test)."""

from __future__ import annotations

from typing import Any

import pytest
from server_support import UpstreamDefect, once_more_if_the_server_failed


class StandInServer:
    """Fake ``LocalTriton``: running or not, counts restarts."""

    pid = 4242
    workdir = None
    log_path = None
    returncode: int | None = None

    def __init__(self) -> None:
        self.alive = True
        self.hung = False
        self.starts = 0

    def running(self) -> bool:
        return self.alive

    def answers(self) -> bool:
        return self.alive and not self.hung

    def log_tail(self, lines: int) -> str:
        return "I1205 loading: m:1"

    def stop(self) -> None:
        self.alive = False

    def start(self) -> None:
        self.starts += 1
        self.alive = True
        self.hung = False


def _body(failures: list[BaseException]) -> Any:
    async def body() -> None:
        if failures:
            raise failures.pop(0)

    return body


async def test_a_server_defect_is_recorded_and_measured_again(
    request: pytest.FixtureRequest,
) -> None:
    server = StandInServer()
    await once_more_if_the_server_failed(
        server,  # type: ignore[arg-type]
        request,
        _body([UpstreamDefect("Triton 2.51 answered INVALID_ARGUMENT ...")]),
    )
    props = dict(request.node.user_properties)
    assert props["attempt_1_not_judged"].startswith("server defect: Triton 2.51")
    assert server.starts == 0  # alive: no restart


async def test_a_second_defect_or_another_failure_is_the_tests_failure(
    request: pytest.FixtureRequest,
) -> None:
    server = StandInServer()
    twice = _body([UpstreamDefect("first"), UpstreamDefect("second")])
    with pytest.raises(UpstreamDefect, match="second"):
        await once_more_if_the_server_failed(server, request, twice)  # type: ignore[arg-type]
    other = _body([AssertionError("3 failed requests")])
    with pytest.raises(AssertionError, match="3 failed requests"):
        await once_more_if_the_server_failed(server, request, other)  # type: ignore[arg-type]


async def test_a_hung_server_is_recorded_restarted_and_measured_again(
    request: pytest.FixtureRequest,
) -> None:
    server = StandInServer()

    async def body() -> None:
        if server.starts == 0:
            server.hung = True  # runs, answers nothing: the call under test timed out
            raise TimeoutError("DEADLINE_EXCEEDED")

    await once_more_if_the_server_failed(server, request, body)  # type: ignore[arg-type]
    props = dict(request.node.user_properties)
    assert props["triton_hung_first_attempt"].startswith("TimeoutError: DEADLINE_EXCEEDED")
    assert "running (pid 4242)" in props["triton_hung_first_attempt"]
    assert server.starts == 1


async def test_a_failure_with_the_server_answering_is_not_retried(
    request: pytest.FixtureRequest,
) -> None:
    server = StandInServer()
    calls: list[int] = []

    async def body() -> None:
        calls.append(1)
        raise TimeoutError("DEADLINE_EXCEEDED")

    with pytest.raises(TimeoutError):
        await once_more_if_the_server_failed(server, request, body)  # type: ignore[arg-type]
    assert calls == [1] and server.starts == 0
    assert request.node.user_properties == []
