"""The benchmark harness's Triton: a fresh ``LocalTriton`` per sweep or run, the agent's
``TritonBackend`` on it, load over Triton gRPC, request tracing off while the client
measures, and Triton 2.51's own defects told apart (``known_defects``).

Triton imports are deferred to first use, so that the CLI starts without tritonclient.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

from dnnscaler.bench.adapter import LoadOptions
from dnnscaler.bench.probes import apply_settled
from dnnscaler.bench.retries import describe_error
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import Knobs

if TYPE_CHECKING:
    from dnnscaler.agents.backend import Backend
    from dnnscaler.loadgen.generator import LoadGen
    from dnnscaler.triton.launcher import LocalTriton

log = get_logger(__name__)

SETTLE_S = 30.0  # the longest a harness waits for a reload's old instances to exit
LOAD_TIMEOUT_S = 120.0  # a model load (Python stubs importing torch on a busy 2-core box)


@dataclass
class TritonServer:
    """A freshly started Triton for one oracle sweep or one staircase run."""

    grpc_url: str
    metrics_url: str | None
    setup: Backend  # a started TritonBackend on this server, for applying knobs
    triton: LocalTriton | None = None  # the server process, to tell whether it died
    copies: list[str] = field(default_factory=list)  # loaded by ``load_copy``, by name

    def death_note(self) -> str | None:
        """A line on the server's death (exit code, log tail), or None while it runs."""
        return self.triton.death_note(3) if self.triton is not None else None

    async def wait_settled(self, model: str, knobs: Knobs, timeout_s: float = SETTLE_S) -> float:
        """Wait until the old instances of a reload to ``knobs`` have exited (seconds
        waited). Triton reports the new config in force while it still stops the old
        instances, one every ~1.5 s with a burst of CPU each: a probe meanwhile measured
        the teardown, and more of it after a move to fewer instances (12-07: after b8 n4
        -> b8 n2, 6 s of it; ``resnet_small``'s b8 n2 failed its first probe at 1,300 rps
        after each reload, p99 129-616 ms of 95.6, and passed every later one at 17-80)."""
        if self.triton is None:
            return 0.0
        start = time.monotonic()
        while self.triton.old_instances_running(model, knobs.instances):
            waited = time.monotonic() - start
            if waited >= timeout_s:
                log.warning("bench.old_instances_linger", model=model, waited_s=round(waited, 1))
                return waited
            await asyncio.sleep(0.1)
        return time.monotonic() - start

    async def load_copy(self, model: str, name: str, knobs: Knobs) -> None:
        """Load a copy of demo ``model`` as ``name``, at ``knobs``, beside it (one load, no
        old instances to stop), and read its knobs back. Two configs then take turns
        under load without a reload between them: with reloads and their teardowns a
        side-by-side ladder took 184 s, on copies 110 s to the same ratio (12-08, 2 cores)."""
        import tritonclient.grpc.aio as grpcclient

        from dnnscaler.triton.demo_models import write_copy

        if self.triton is None:
            raise RuntimeError(f"{name}: no local Triton, so no repository to load a copy into")
        write_copy(self.triton.model_repo, model, name, knobs)
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            await client.load_model(name, client_timeout=LOAD_TIMEOUT_S)
        finally:
            await client.close()
        if name not in self.copies:
            self.copies.append(name)
        await apply_settled(self, name, knobs)  # a no-op apply: the knobs read back

    async def copy_for(self, model: str, knobs: Knobs) -> str:
        """A copy of ``model`` at ``knobs``, loaded beside it (``load_copy``), by its name:
        a sweep's ``place``, so that no config is measured right after a reload."""
        name = f"{model}_b{knobs.max_batch_size}n{knobs.instances}q{knobs.queue_delay_us}"
        await self.load_copy(model, name, knobs)
        return name

    async def unload_copies(self, timeout_s: float = SETTLE_S) -> float:
        """Unload every copy and wait until their instances' processes have exited (seconds
        waited for them): what is measured next runs beside no copy's teardown, and an
        agent started next sees no copy to steer."""
        import tritonclient.grpc.aio as grpcclient

        if not self.copies:
            return 0.0
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            for name in self.copies:
                await client.unload_model(name, client_timeout=LOAD_TIMEOUT_S)
        finally:
            await client.close()
        start = time.monotonic()
        while self.triton is not None and any(
            self.triton.old_instances_running(name, 0) for name in self.copies
        ):
            if time.monotonic() - start >= timeout_s:
                log.warning("bench.copies_linger", copies=self.copies, waited_s=round(timeout_s))
                break
            await asyncio.sleep(0.1)
        self.copies.clear()
        await self.setup.list_models()  # the setup backend forgets them
        return time.monotonic() - start


@contextlib.asynccontextmanager
async def start_server(
    repo: Path, models: Sequence[str], workdir: Path
) -> AsyncIterator[TritonServer]:
    """A new LocalTriton serving ``models`` from ``repo`` in its own ``workdir``, with a
    started setup backend; both stopped on exit. An exception from the body gets a note
    when the server died meanwhile (a crash under overload, say)."""
    from dnnscaler.agents.backends.triton import TritonBackend
    from dnnscaler.triton.launcher import LocalTriton

    async with LocalTriton(repo, list(models), workdir=workdir) as triton:
        setup = TritonBackend(triton.grpc_url, metrics_url=triton.metrics_url)
        server = TritonServer(triton.grpc_url, triton.metrics_url, setup, triton)
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


@contextlib.asynccontextmanager
async def untraced(url: str) -> AsyncIterator[None]:
    """Request tracing off on the server meanwhile (restored on exit if it was on).

    Triton 2.51 with request tracing on corrupts its heap (SIGSEGV/SIGABRT in
    ``TRITONBACKEND_RequestRelease``) or hangs when Python-backend models with 2+ instances
    execute batches under a saturating load: 2 runs of 2 crashed or hung in a closed loop at
    32 in flight on ``wide_mlp`` b8 n2, 0 of 16 without tracing (2026-11-29). Client-side
    measurements (oracle sweeps, side-by-side ladders) need no server traces, so they run
    without; only the agent's per-window tail needs them.
    """
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        before = await client.get_trace_settings(as_json=True, client_timeout=10)
        level = before.get("settings", {}).get("trace_level", {}).get("value", ["OFF"])
        was_on = [x for x in level if x != "OFF"]
        if was_on:
            await client.update_trace_settings(settings={"trace_level": ["OFF"]}, client_timeout=10)
        try:
            yield
        finally:
            if was_on:
                with contextlib.suppress(Exception):  # a dead server has nothing to restore
                    await client.update_trace_settings(
                        settings={"trace_level": was_on}, client_timeout=10
                    )
    finally:
        await client.close()


class TritonAdapter:
    """``ServerAdapter`` for a local Triton (``dnnscaler bench triton``)."""

    kind = "triton"
    name = "Triton"

    @property
    def models(self) -> Sequence[str]:
        from dnnscaler.triton.demo_models import DEMO_MODELS

        return tuple(DEMO_MODELS)

    def write_models(self, repo: Path, models: Sequence[str]) -> None:
        from dnnscaler.triton.demo_models import write_repository

        write_repository(repo, list(models))

    def serve(
        self, repo: Path, models: Sequence[str], workdir: Path
    ) -> contextlib.AbstractAsyncContextManager[TritonServer]:
        return start_server(repo, models, workdir)

    def make_backend(self, server: TritonServer) -> Backend:
        from dnnscaler.agents.backends.triton import TritonBackend

        return TritonBackend(server.grpc_url, metrics_url=server.metrics_url)

    def load_gen(self, server: TritonServer, model: str, **options: Unpack[LoadOptions]) -> LoadGen:
        from dnnscaler.loadgen.generator import LoadGen

        return LoadGen(server.grpc_url, model, **options)

    def quiet_probe(self, server: TritonServer) -> contextlib.AbstractAsyncContextManager[None]:
        return untraced(server.grpc_url)

    def upstream_defect(self, gen: LoadGen) -> str | None:
        return gen.upstream_defect()


TRITON = TritonAdapter()
