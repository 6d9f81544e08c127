"""Admin API over real gRPC: listings, SLO and policy changes, and bad input that must be
refused with the right status code and a message naming the field, losing nothing."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from dnnscaler.v1 import admin_pb2, common_pb2

from .conftest import wait_for
from .processes import run_cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def served(controller, start_agent):
    await start_agent(controller.address, "node-a-gpu0", {"inception": ("imagenet/Inc-V1", 40.0)})
    await wait_for(lambda: controller.registry.known_model("inception"))
    return controller


async def _code(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await coro
    return ei.value.code(), ei.value.details() or ""


async def test_listings(served, admin) -> None:
    agents = await admin.ListAgents(admin_pb2.ListAgentsRequest())
    assert [a.agent_id for a in agents.agents] == ["node-a-gpu0"]
    a = agents.agents[0]
    assert a.connected and a.backend_kind == "sim" and list(a.models) == ["inception"]
    models = await admin.ListModels(admin_pb2.ListModelsRequest())
    assert [m.model for m in models.models] == ["inception"]
    m = models.models[0]
    assert m.policy == "aimd" and m.slo.percentile == 99.0 and m.limits.max_batch_size >= 1


async def test_set_slo_rejects_bad_values_and_keeps_the_old_one(served, admin) -> None:
    ok = await admin.SetSlo(
        admin_pb2.SetSloRequest(model="inception", slo=common_pb2.Slo(percentile=95, latency_ms=50))
    )
    assert ok.models[0].slo.latency_ms == 50
    bad = [
        (common_pb2.Slo(percentile=99, latency_ms=0), "latency_ms"),
        (common_pb2.Slo(percentile=99, latency_ms=-3), "latency_ms"),
        (common_pb2.Slo(percentile=100, latency_ms=10), "percentile"),
        (common_pb2.Slo(percentile=0, latency_ms=10), "percentile"),
    ]
    for slo, field in bad:
        code, details = await _code(
            admin.SetSlo(admin_pb2.SetSloRequest(model="inception", slo=slo))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in details
    code, details = await _code(
        admin.SetSlo(
            admin_pb2.SetSloRequest(model="nope", slo=common_pb2.Slo(percentile=99, latency_ms=5))
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details
    m = await admin.GetModel(admin_pb2.GetModelRequest(model="inception"))
    assert (m.slo.percentile, m.slo.latency_ms) == (95, 50)  # nothing lost


async def test_get_model_not_found(served, admin) -> None:
    code, _ = await _code(admin.GetModel(admin_pb2.GetModelRequest(model="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await _code(
        admin.GetModel(admin_pb2.GetModelRequest(model="inception", agent_id="ghost"))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "ghost" in details
    code, _ = await _code(admin.GetModel(admin_pb2.GetModelRequest(model="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_set_policy_validates_and_static_pins_knobs(served, admin) -> None:
    code, details = await _code(
        admin.SetPolicy(admin_pb2.SetPolicyRequest(model="inception", policy="magic"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "aimd" in details
    code, details = await _code(
        admin.SetPolicy(
            admin_pb2.SetPolicyRequest(
                model="inception",
                policy="static",
                knobs=common_pb2.Knobs(max_batch_size=100000, instances=1),
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size" in details
    code, details = await _code(
        admin.SetPolicy(
            admin_pb2.SetPolicyRequest(
                model="inception",
                policy="static",
                knobs=common_pb2.Knobs(max_batch_size=1, instances=99),
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "instances" in details
    m = await admin.GetModel(admin_pb2.GetModelRequest(model="inception"))
    assert m.policy == "aimd"  # rejected requests changed nothing

    await admin.SetPolicy(
        admin_pb2.SetPolicyRequest(
            model="inception",
            policy="static",
            knobs=common_pb2.Knobs(max_batch_size=8, instances=2),
        )
    )

    async def pinned() -> bool:
        m = await admin.GetModel(admin_pb2.GetModelRequest(model="inception"))
        return m.knobs.max_batch_size == 8 and m.knobs.instances == 2

    await wait_for(pinned, timeout_s=20)


async def test_out_of_range_values_and_huge_names_are_refused_naming_the_field(
    served, admin
) -> None:
    """#15's bad input: an SLO of 1e308 or 1e-6 ms, static knobs with no instances (was
    UNKNOWN: "Unexpected InvalidValue"), and a 100 kB name, whose refusal must not echo it."""
    bad_slos = [
        (common_pb2.Slo(percentile=99, latency_ms=1e308), "slo.latency_ms"),
        (common_pb2.Slo(percentile=99, latency_ms=1e-6), "slo.latency_ms"),
        (common_pb2.Slo(percentile=99, latency_ms=float("nan")), "slo.latency_ms"),
        (common_pb2.Slo(percentile=10, latency_ms=50), "slo.percentile"),
        (common_pb2.Slo(percentile=99.9999, latency_ms=50), "slo.percentile"),
    ]
    for slo, field in bad_slos:
        code, details = await _code(
            admin.SetSlo(admin_pb2.SetSloRequest(model="inception", slo=slo))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    for knobs, field in [
        (common_pb2.Knobs(max_batch_size=8, instances=0), "knobs.instances"),
        (common_pb2.Knobs(max_batch_size=0, instances=2), "knobs.max_batch_size"),
        (common_pb2.Knobs(max_batch_size=8, instances=2, queue_delay_us=2**32 - 1), "knobs.queue"),
    ]:
        code, details = await _code(
            admin.SetPolicy(
                admin_pb2.SetPolicyRequest(model="inception", policy="static", knobs=knobs)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    huge = "m" * 100_000
    calls = [
        admin.SetSlo(
            admin_pb2.SetSloRequest(model=huge, slo=common_pb2.Slo(percentile=99, latency_ms=5))
        ),
        admin.SetPolicy(admin_pb2.SetPolicyRequest(model=huge, policy="aimd")),
        admin.GetModel(admin_pb2.GetModelRequest(model=huge)),
        admin.GetModel(admin_pb2.GetModelRequest(model="inception", agent_id=huge)),
        admin.ListModels(admin_pb2.ListModelsRequest(model=huge)),
        admin.SetPolicy(admin_pb2.SetPolicyRequest(model="inception", policy=huge)),
        admin.GetModel(admin_pb2.GetModelRequest(model="in\x00ception")),
    ]
    for call in calls:
        code, details = await _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:200])
        assert len(details) < 300, details[:300]
        assert "100000 characters" in details or "printable" in details, details
    m = await admin.GetModel(admin_pb2.GetModelRequest(model="inception"))
    assert (m.policy, m.slo.percentile, m.slo.latency_ms) == ("aimd", 99.0, 100.0)  # all kept


_cli = run_cli


async def test_cli_verbs_and_exit_codes(served) -> None:
    addr = served.address
    r = await asyncio.to_thread(_cli, "status", "--controller", addr, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["agents"][0]["agent_id"] == "node-a-gpu0"
    assert doc["models"][0]["model"] == "inception"
    assert doc["slo_latency"].startswith("SLO latency is server-side")
    r = await asyncio.to_thread(_cli, "status", "--controller", addr)
    assert r.returncode == 0 and "inception" in r.stdout
    # What the SLO bounds is said where the SLO is shown.
    assert "SLO latency is server-side" in r.stdout, r.stdout
    r = await asyncio.to_thread(
        _cli, "set-slo", "inception", "--latency-ms", "30", "--controller", addr
    )
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(
        _cli, "set-slo", "inception", "--latency-ms", "-1", "--controller", addr
    )
    assert r.returncode == 2 and "latency_ms" in r.stderr
    r = await asyncio.to_thread(_cli, "set-slo", "ghost", "--latency-ms", "5", "--controller", addr)
    assert r.returncode == 3 and "ghost" in r.stderr
    r = await asyncio.to_thread(_cli, "model", "inception", "--controller", addr, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["slo"]["latency_ms"] == 30
    r = await asyncio.to_thread(_cli, "status", "--controller", "127.0.0.1:1", "--timeout-s", "1")
    assert r.returncode == 4
