"""What the benchmark harness needs from an inference server, and nothing more.

The protocol (oracle sweep, staircase, convergence runs) is the same on every server; what
differs is how a local server is started, which agent backend drives it, how the load
generator reaches it and what its known faults look like. A ``ServerAdapter`` holds those
parts for one kind of server (``triton_adapter``), so that the harness never names one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict, TypeVar, Unpack

if TYPE_CHECKING:
    from dnnscaler.agents.backend import Backend
    from dnnscaler.core.types import Knobs
    from dnnscaler.loadgen.generator import LoadGen


class LoadOptions(TypedDict, total=False):
    """``LoadGen`` options the harness sets; one left out keeps the load generator's own."""

    rate_rps: float  # open loop (exactly one of rate_rps and concurrency)
    concurrency: int  # closed loop
    seed: int
    max_duration_s: float
    max_in_flight: int


class ServerHandle(Protocol):
    """A started local server, as the harness sees it."""

    @property
    def setup(self) -> Backend:
        """A started agent backend on this server, for applying knobs and listing models."""
        ...

    def death_note(self) -> str | None:
        """A line on the server's death (exit code, log tail), or None while it runs."""
        ...

    async def wait_settled(self, model: str, knobs: Knobs) -> float:
        """Wait until a reload of ``model`` to ``knobs`` has finished on the server (its old
        instances gone), not only until the new config answers; seconds waited."""
        ...


H = TypeVar("H", bound=ServerHandle)


class ServerAdapter(Protocol[H]):
    """One kind of inference server, for the harness; ``H`` is its started-server handle."""

    kind: str  # the name in the CLI (``bench <kind>``), reports and work folders
    name: str  # the server's name in messages ("Triton")

    @property
    def models(self) -> Sequence[str]:
        """The models it can serve (valid ``--models``)."""
        ...

    def write_models(self, repo: Path, models: Sequence[str]) -> None:
        """Write ``models`` into a fresh model repository (or store) at ``repo``."""
        ...

    def serve(
        self, repo: Path, models: Sequence[str], workdir: Path
    ) -> AbstractAsyncContextManager[H]:
        """A new local server for ``models`` from ``repo`` with its own ``workdir``; stopped
        on exit. An exception from the body gets a note when the server died meanwhile."""
        ...

    def make_backend(self, server: H) -> Backend:
        """A new (not started) agent backend on ``server``, for the agent under test."""
        ...

    def load_gen(self, server: H, model: str, **options: Unpack[LoadOptions]) -> LoadGen:
        """A load generator (not started) that sends ``model``'s requests to ``server``."""
        ...

    def quiet_probe(self, server: H) -> AbstractAsyncContextManager[None]:
        """The server set up for client-side measurement meanwhile (a no-op where nothing
        needs changing), restored on exit."""
        ...

    def upstream_defect(self, gen: LoadGen) -> str | None:
        """What the server did wrong when every request ``gen`` saw fail was the server's
        own known defect, else None (no failure, or one of another kind)."""
        ...
