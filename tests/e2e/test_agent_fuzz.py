"""Random agent streams against a running controller (a subprocess, beside a well-behaved
sim agent): NaN, infinite and negative latencies, absurd counts and limits, generations
past what SQLite stores, unknown and malformed model names, empty, huge and unprintable
agent ids, reports before the hello, duplicated reports and models, oversize messages
(#18, "agent-protocol fuzzing").

Each bad value is refused or clamped with a logged reason and counted in
``dnnscaler_agent_report_problems``; none crashes the controller, moves the knobs of a model
whose reports were bad, or stops it from controlling the good agent. Hypothesis draws the
streams; the sim GPU behind the good agent is the only fake.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnnscaler.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, common_pb2

from .processes import Daemon, controller, free_port, sim_agent, wait_for_models

pytestmark = pytest.mark.timeout(300)

GOOD_AGENT, GOOD_MODEL = "good-gpu0", "good"
FUZZ_IDS = ("fuzz-a", "fuzz-b", "fuzz-c")
FUZZ_MODELS = ("fz0", "fz1")
HELLO_KNOBS = common_pb2.Knobs(max_batch_size=2, instances=1)
LIMITS = common_pb2.KnobLimits(max_batch_size=64, max_instances=4, max_queue_delay_us=1000)
MAX_RECEIVE_BYTES = 4 * 1024 * 1024  # gRPC's default, which the controller keeps
# A refusal of a whole stream; UNKNOWN or INTERNAL would be a crash in the handler.
STREAM_REFUSALS = {"FAILED_PRECONDITION", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}


@dataclass
class Fleet:
    controller: Daemon
    agent: Daemon
    channel: grpc.Channel
    admin: admin_pb2_grpc.AdminServiceStub
    metrics_port: int
    channel_address: str
    good_reports_at_start: int = 0
    log_offset: int = 0

    def tail(self) -> str:
        return f"{self.controller.tail()}\n{self.agent.tail()}"

    def connect(self, msgs: list[agent_pb2.AgentMessage]) -> list[str]:
        """Send ``msgs`` on one stream and close it; the kinds of the answers, then the
        status code if the stream ended with one. The controller handles a stream's
        messages in order before it ends the stream, so on return all were processed."""
        stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        kinds: list[str] = []
        try:
            for m in stub.Connect(iter(msgs), timeout=20):
                kinds.append(str(m.WhichOneof("kind")))
        except grpc.RpcError as e:
            kinds.append(e.code().name)
        return kinds

    def new_events(self) -> list[dict[str, object]]:
        """The controller's structured log events written since the last call."""
        with self.controller.log.open("rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += data.rfind(b"\n") + 1
        out = []
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def counter(self, field_name: str, outcome: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        want = f'dnnscaler_agent_report_problems_total{{field="{field_name}",outcome="{outcome}"}}'
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


def _agent(stub: admin_pb2_grpc.AdminServiceStub, agent_id: str) -> admin_pb2.AgentStatus:
    agents = stub.ListAgents(admin_pb2.ListAgentsRequest(), timeout=5).agents
    return next(a for a in agents if a.agent_id == agent_id)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("agent-fuzz")
    address = f"127.0.0.1:{free_port()}"
    port = free_port()
    ctl = controller(logs, address, "--policy", "aimd", "--metrics-port", str(port))
    agent = sim_agent(logs, address, GOOD_AGENT, f"{GOOD_MODEL}=imagenet/Inc-V1@40")
    channel = grpc.insecure_channel(address)
    fleet = Fleet(ctl, agent, channel, admin_pb2_grpc.AdminServiceStub(channel), port, address)
    try:
        wait_for_models(fleet.admin, {GOOD_MODEL}, [ctl, agent], timeout_s=60)
        fleet.good_reports_at_start = _agent(fleet.admin, GOOD_AGENT).reports
        yield fleet
    finally:
        channel.close()
        agent.stop()
        ctl.stop()


def _state(name: str) -> agent_pb2.ModelState:
    return agent_pb2.ModelState(
        name=name, knobs=HELLO_KNOBS, limits=LIMITS, generation=0, available=True
    )


def _window() -> common_pb2.WindowStats:
    return common_pb2.WindowStats(
        window_s=0.5,
        completed=20,
        throughput_rps=40.0,
        latency_p50_ms=5.0,
        latency_p95_ms=9.0,
        latency_p99_ms=12.0,
    )


bad_floats = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e-9, 1e12, 1e308])
huge_u64 = st.sampled_from([2**63, 2**64 - 1, 2**53 + 1])
huge_u32 = st.sampled_from([2**32 - 1, 2**31, 100_000])
bad_names = st.one_of(
    st.just(""),
    st.sampled_from(["a\x00b", "\n", "x\u200b\x7f"]),
    st.integers(257, 50_000).map(lambda n: "m" * n),
)
LATENCIES = ("latency_mean_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms")


@st.composite
def defects(draw: st.DrawFn, mr: agent_pb2.ModelReport) -> None:
    """Spoil one value of ``mr`` so that its model's window must be refused."""
    w, s = mr.window, mr.state
    kind = draw(st.integers(0, 10))
    if kind == 0:
        setattr(w, draw(st.sampled_from(LATENCIES)), draw(bad_floats))
    elif kind == 1:
        w.throughput_rps = draw(bad_floats)
    elif kind == 2:
        w.window_s = draw(st.sampled_from([0.0, -0.5, math.nan, math.inf, 1e9]))
    elif kind == 3:
        w.completed = draw(huge_u64)
    elif kind == 4:
        w.batch_stats.add(
            batch_size=draw(st.sampled_from([0, 2**32 - 1])),
            count=draw(st.integers(0, 2**64 - 1)),
            compute_ms_mean=draw(st.floats()),
        )
    elif kind == 5:
        w.device_busy_share = draw(st.sampled_from([1.5, -0.1, math.nan]))
    elif kind == 6:
        s.knobs.instances = draw(huge_u32)
    elif kind == 7:
        setattr(s.limits, draw(st.sampled_from(["max_instances", "max_batch_size"])), 2**32 - 1)
    elif kind == 8:
        s.generation = draw(huge_u64)
    elif kind == 9:
        s.instance_memory_mb = draw(bad_floats)
    else:
        s.name = draw(bad_names)


@st.composite
def fuzz_reports(draw: st.DrawFn, seq: int) -> agent_pb2.Report:
    """A report whose every model entry carries at least one defect, plus values that are
    only clamped (impossible GPU readings, quantiles out of order, long text)."""
    r = agent_pb2.Report(seq=seq, backend_available=True)
    if draw(st.booleans()):
        r.gpu.utilization_pct = draw(st.sampled_from([math.nan, 250.0, -3.0]))
    if draw(st.booleans()):
        r.backend_message = "z" * draw(st.integers(1001, 100_000))
    for _ in range(draw(st.integers(1, 3))):
        mr = r.models.add()
        name = draw(st.sampled_from([*FUZZ_MODELS, "unknown-model", GOOD_MODEL]))
        mr.state.CopyFrom(_state(name))
        mr.window.CopyFrom(_window())
        if draw(st.booleans()):
            mr.window.latency_p99_ms = 1.0  # below p50: clamped
        for _ in range(draw(st.integers(1, 3))):
            draw(defects(mr))
    return r


@dataclass(frozen=True)
class Stream:
    scenario: str
    messages: list[agent_pb2.AgentMessage]
    agent_id: str
    # Model entries of the stream's last report: each must be refused with a log event.
    # (Reports wait for the decider newest-wins per agent, so earlier ones may be
    # superseded unread, and a duplicate may be read in place of its original.)
    model_entries: int = 0


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    scenario = draw(st.sampled_from(["normal"] * 6 + ["report_first", "bad_id"]))
    agent_id = draw(st.sampled_from(FUZZ_IDS))
    hello = agent_pb2.Hello(agent_id=agent_id, node="fuzz", backend_kind="sim")
    if draw(st.booleans()):  # clamped: kept and shown cut to 1,000 characters
        hello.node = "n" * draw(st.integers(1001, 200_000))
        hello.gpu.memory_total_mb = draw(bad_floats)
    hello.backend_available = True
    hello.models.extend(_state(m) for m in FUZZ_MODELS)
    if draw(st.booleans()):  # a model whose announced state is itself bad
        bad = hello.models.add()
        bad.CopyFrom(_state("fz-bad"))
        bad.limits.max_instances = 2**32 - 1
    if scenario == "bad_id":
        hello.agent_id = draw(bad_names)
        return Stream(scenario, [agent_pb2.AgentMessage(hello=hello)], hello.agent_id)
    reports = [draw(fuzz_reports(seq)) for seq in range(1, draw(st.integers(1, 4)) + 1)]
    msgs = [agent_pb2.AgentMessage(report=r) for r in reports]
    if scenario == "report_first":
        return Stream(scenario, msgs, agent_id)
    duplicates = draw(st.integers(0, 2))
    msgs.extend(agent_pb2.AgentMessage(report=reports[-1]) for _ in range(duplicates))
    if draw(st.booleans()):
        msgs.insert(draw(st.integers(0, len(msgs))), agent_pb2.AgentMessage(hello=hello))
    if draw(st.booleans()):
        msgs.append(
            agent_pb2.AgentMessage(
                apply_result=agent_pb2.ApplyResult(
                    model=draw(st.sampled_from(["nope", *FUZZ_MODELS])),
                    generation=draw(st.integers(0, 3) | huge_u64),
                    ok=draw(st.booleans()),
                    knobs_in_force=common_pb2.Knobs(
                        max_batch_size=draw(st.sampled_from([0, 64, 2**32 - 1])),
                        instances=draw(st.sampled_from([0, 4, 2**32 - 1])),
                    ),
                    error="e" * draw(st.sampled_from([0, 5000])),
                )
            )
        )
    return Stream(
        scenario, [agent_pb2.AgentMessage(hello=hello), *msgs], agent_id, len(reports[-1].models)
    )


def _refusals_logged(fleet: Fleet, s: Stream) -> None:
    """The last report's model entries were each refused and logged with reasons (polled:
    the decider reads reports after the stream that brought them may have ended)."""
    deadline = time.monotonic() + 10
    entries: list[dict[str, object]] = []
    whole: list[dict[str, object]] = []
    while True:
        events = [e for e in fleet.new_events() if e.get("agent") == s.agent_id]
        entries += [e for e in events if e["event"] == "model_report_rejected"]
        whole += [e for e in events if e["event"] == "report_rejected"]
        if len(entries) >= s.model_entries:
            break
        assert time.monotonic() < deadline, (s, entries[-3:], whole, fleet.tail())
        time.sleep(0.05)
    assert all(e["reasons"] for e in entries + whole), (entries, whole)
    assert all("seq" in str(e["reasons"]) for e in whole), whole


def _fuzz_models_unmoved(fleet: Fleet) -> None:
    """Models whose every report was bad keep the knobs their hello announced."""
    for m in fleet.admin.ListModels(admin_pb2.ListModelsRequest(), timeout=5).models:
        if m.agent_id in FUZZ_IDS:
            why = (m, fleet.tail())
            assert (m.knobs.max_batch_size, m.knobs.instances) == (2, 1), why
            assert m.knob_changes == 0 and not m.HasField("pending_knobs"), why


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream=streams())
def test_random_agent_streams_are_refused_with_reasons_and_move_no_knob(
    fleet: Fleet, stream: Stream
) -> None:
    kinds = fleet.connect(stream.messages)
    why = (stream.scenario, kinds, fleet.tail())
    if stream.scenario == "report_first":
        assert kinds == ["FAILED_PRECONDITION"], why
    elif stream.scenario == "bad_id":
        assert kinds == ["INVALID_ARGUMENT"], why
    else:
        # A welcome and nothing else: no knob update for values that were all refused.
        assert kinds == ["welcome"], why
        _refusals_logged(fleet, stream)
    assert fleet.controller.alive(), why
    _fuzz_models_unmoved(fleet)


def test_an_oversize_message_ends_only_its_own_stream(fleet: Fleet) -> None:
    """A message above the receive limit is refused by gRPC itself (RESOURCE_EXHAUSTED
    to the sender, before any handler sees it): that stream ends, the controller goes on.
    Just below the limit, a 3 MB message is taken and its text cut."""
    hello = agent_pb2.Hello(agent_id="fuzz-big", models=[_state("fz0")], backend_available=True)
    big = agent_pb2.Report(seq=1, backend_message="x" * (MAX_RECEIVE_BYTES + 1024))
    kinds = fleet.connect([agent_pb2.AgentMessage(hello=hello), agent_pb2.AgentMessage(report=big)])
    assert kinds[-1] == "RESOURCE_EXHAUSTED", kinds
    assert _agent(fleet.admin, "fuzz-big").reports == 0  # never reached the handler
    fleet.new_events()
    clamps_before = fleet.counter("backend_message", "clamped")
    near = agent_pb2.Report(seq=1, backend_message="y" * 3_000_000, backend_available=True)
    kinds = fleet.connect(
        [agent_pb2.AgentMessage(hello=hello), agent_pb2.AgentMessage(report=near)]
    )
    assert kinds == ["welcome"], (kinds, fleet.tail())
    deadline = time.monotonic() + 10
    while (status := _agent(fleet.admin, "fuzz-big")).reports < 1:
        assert time.monotonic() < deadline, fleet.tail()
        time.sleep(0.05)
    assert len(status.backend_message) == 1000 and status.reports == 1, status.reports
    assert fleet.counter("backend_message", "clamped") == clamps_before + 1
    # Huge hello texts are cut before they are kept: two agents with 3 MB node names
    # would otherwise make every status answer larger than a client takes.
    for agent_id in ("fuzz-node-1", "fuzz-node-2"):
        huge = agent_pb2.Hello(agent_id=agent_id, node="n" * 3_000_000, backend_available=True)
        assert fleet.connect([agent_pb2.AgentMessage(hello=huge)]) == ["welcome"]
        assert len(_agent(fleet.admin, agent_id).node) == 1000
    # Too many models in one hello (a 4 MiB one holds about 100,000): the first 256 are
    # taken, the rest cut with one log line, not one each.
    many = agent_pb2.Hello(agent_id="fuzz-many", backend_available=True)
    many.models.extend(_state(f"many{i}") for i in range(20_000))
    fleet.new_events()
    assert fleet.connect([agent_pb2.AgentMessage(hello=many)]) == ["welcome"]
    assert len(_agent(fleet.admin, "fuzz-many").models) == 256
    events = [e for e in fleet.new_events() if e.get("agent") == "fuzz-many"]
    cuts = [e for e in events if e["event"] == "report_values_clamped"]
    assert len(cuts) == 1 and "20000 entries" in str(cuts[0]["reasons"]), events[-3:]
    assert not [e for e in events if e["event"] == "model_report_rejected"]


def test_after_the_fuzz_the_controller_serves_and_controls_the_good_agent(fleet: Fleet) -> None:
    """Runs last (module order): health and admin answer, the counters saw the refusals,
    nothing of the fuzz agents' models moved, and the good agent is still controlled end to
    end: a pinned config reaches its (simulated) server."""
    with grpc.insecure_channel(fleet.channel_address) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for name in ("knobs", "generation", "model", "limits", "window.window_s"):
        assert fleet.counter(name, "rejected") >= 1, name
    assert fleet.counter("gpu.utilization_pct", "clamped") >= 1
    _fuzz_models_unmoved(fleet)
    history = fleet.admin.History(admin_pb2.HistoryRequest(model="fz0"), timeout=5).decisions
    assert list(history) == [], history
    good = _agent(fleet.admin, GOOD_AGENT)
    assert good.connected and good.reports > fleet.good_reports_at_start, fleet.tail()
    fleet.admin.SetPolicy(
        admin_pb2.SetPolicyRequest(
            model=GOOD_MODEL, policy="static", knobs=common_pb2.Knobs(max_batch_size=4, instances=2)
        ),
        timeout=5,
    )
    deadline = time.monotonic() + 30
    while True:
        m = next(
            m
            for m in fleet.admin.ListModels(admin_pb2.ListModelsRequest(), timeout=5).models
            if m.agent_id == GOOD_AGENT
        )
        if (m.knobs.max_batch_size, m.knobs.instances) == (4, 2) and not m.HasField(
            "pending_knobs"
        ):
            break
        assert time.monotonic() < deadline, (m, fleet.tail())
        time.sleep(0.2)
    assert fleet.controller.alive() and fleet.agent.alive(), fleet.tail()
