"""The benchmark harness's TorchServe: a fresh ``LocalTorchServe`` per sweep or run, the
agent's ``TorchServeBackend`` on it, load over TorchServe's HTTP inference API.

The model store (``write_models``) holds the demo archives and their limits files; every
server of a bench serves from that one store, so the twin archives the backend writes
there for batch changes are built once and reused. TorchServe has no request tracing to
turn off (the agent reads its access log), so ``quiet_probe`` changes nothing, and no
TorchServe defect is known to tell apart, so ``upstream_defect`` is always None.

TorchServe imports are deferred to first use, so that the CLI starts without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

from dnnscaler.bench.adapter import LoadOptions
from dnnscaler.bench.retries import describe_error
from dnnscaler.core.logging import get_logger

if TYPE_CHECKING:
    from dnnscaler.agents.backend import Backend
    from dnnscaler.core.types import Knobs
    from dnnscaler.loadgen.generator import LoadGen
    from dnnscaler.torchserve.launcher import LocalTorchServe

log = get_logger(__name__)


@dataclass
class TorchServeServer:
    """A freshly started TorchServe for one oracle sweep or one staircase run."""

    server: LocalTorchServe
    store: Path  # the model store it serves from (the backend writes twin archives there)
    setup: Backend  # a started TorchServeBackend on this server, for applying knobs

    def death_note(self) -> str | None:
        """A line on the server's death (log tail), or None while it runs."""
        return self.server.death_note()

    async def wait_settled(self, model: str, knobs: Knobs) -> float:
        """Nothing to wait for: the backend applies fewer workers by a new version and
        unregisters the old one synchronously (``_unregister``) before it answers; more
        workers are added to the version in force. (Not measured on TorchServe, #17.)"""
        return 0.0


def backend_for(server: LocalTorchServe, store: Path, *, access_log: bool = True) -> Backend:
    """A new (not started) agent backend on ``server``; ``access_log=False`` for one that
    only applies knobs (the access log is read for windows, which only the agent takes)."""
    from dnnscaler.agents.backends.torchserve import TorchServeBackend

    return TorchServeBackend(
        server.management_url,
        server.metrics_url,
        access_log=server.access_log if access_log else None,
        model_store=store,
    )


@contextlib.asynccontextmanager
async def start_server(
    store: Path, models: Sequence[str], workdir: Path
) -> AsyncIterator[TorchServeServer]:
    """A new LocalTorchServe registering ``models`` from ``store`` in its own ``workdir``,
    with a started setup backend; both stopped on exit. An exception from the body gets a
    note when the server died meanwhile."""
    from dnnscaler.torchserve.launcher import LocalTorchServe

    async with LocalTorchServe(store, list(models), workdir=workdir) as ts:
        setup = backend_for(ts, store, access_log=False)
        server = TorchServeServer(ts, store, setup)
        try:
            await setup.start()
            yield server
        except Exception as exc:
            note = server.death_note()
            if note:
                exc.add_note(note)
            raise
        finally:
            try:
                await setup.close()
            except Exception as exc:  # the run's own outcome matters more
                log.warning("bench.setup_close_failed", error=describe_error(exc))


class TorchServeAdapter:
    """``ServerAdapter`` for a local TorchServe (``dnnscaler bench torchserve``)."""

    kind = "torchserve"
    name = "TorchServe"

    @property
    def models(self) -> Sequence[str]:
        from dnnscaler.triton.demo_models import DEMO_MODELS

        return tuple(DEMO_MODELS)

    def write_models(self, repo: Path, models: Sequence[str]) -> None:
        from dnnscaler.torchserve.archives import build_demo_store

        build_demo_store(repo, models)

    def serve(
        self, repo: Path, models: Sequence[str], workdir: Path
    ) -> contextlib.AbstractAsyncContextManager[TorchServeServer]:
        return start_server(repo, models, workdir)

    def make_backend(self, server: TorchServeServer) -> Backend:
        return backend_for(server.server, server.store)

    def load_gen(
        self, server: TorchServeServer, model: str, **options: Unpack[LoadOptions]
    ) -> LoadGen:
        from dnnscaler.loadgen.generator import LoadGen
        from dnnscaler.triton.demo_models import DEMO_MODELS

        return LoadGen(
            server.server.inference_url,
            model,
            protocol="torchserve",
            input_shape=DEMO_MODELS[model].input_dims,
            **options,
        )

    def quiet_probe(self, server: TorchServeServer) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    def upstream_defect(self, gen: LoadGen) -> str | None:
        return None


TORCHSERVE = TorchServeAdapter()
