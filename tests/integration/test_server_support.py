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
        self.starts = 0

    def running(self) -> bool:
        return self.alive

    def log_tail(self, lines: int) -> str:
        return "I1205 loading: m:1"

    def stop(self) -> None:
        self.alive = False

    def start(self) -> None:
        self.starts += 1
        self.alive = True


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
