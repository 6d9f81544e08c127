"""The agent's apply backoff, on the sim backend: knobs the server refused are not sent to
it again until their backoff passes, whatever the controller keeps asking (#18: a refused
apply was retried at every report, one reload each on a real Triton)."""

from __future__ import annotations

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.cli import build_backend
from dnnscaler.agents.config import AgentConfig
from dnnscaler.core.types import Knobs

MODEL = "m"


def _agent() -> Agent:
    # A backoff far longer than the test: every repeat of refused knobs is held back.
    cfg = AgentConfig(
        agent_id="unit",
        sim_models=(f"{MODEL}=imagenet/Inc-V1@0",),
        apply_backoff_initial_s=600.0,
        apply_backoff_max_s=600.0,
    )
    return Agent(cfg, build_backend(cfg))


def _outcomes(agent: Agent) -> dict[str, float]:
    samples = agent.metrics.registry.collect()
    return {
        s.labels["outcome"]: s.value
        for family in samples
        if family.name == "dnnscaler_agent_applies"
        for s in family.samples
        if s.name.endswith("_total") and s.labels.get("model") == MODEL
    }


async def test_refused_knobs_are_held_back_and_other_knobs_still_go_through() -> None:
    agent = _agent()
    await agent.backend.start()
    refused = Knobs(max_batch_size=100_000, instances=1)  # beyond every profile's limits
    good = Knobs(max_batch_size=2, instances=1)

    await agent._apply(MODEL, 1, refused)
    assert (agent.apply_attempts, agent.held_back) == (1, 0)
    for generation in (2, 3, 4):  # the controller asks again at each report
        await agent._apply(MODEL, generation, refused)
    assert (agent.apply_attempts, agent.held_back) == (1, 3)

    await agent._apply(MODEL, 5, good)  # other knobs are not held back
    assert agent.apply_attempts == 2
    assert agent.progress[MODEL].in_progress == (5, good)  # the sim takes a while to reload

    await agent._apply(MODEL, 6, refused)  # a success elsewhere does not clear the backoff
    assert (agent.apply_attempts, agent.held_back) == (2, 4)
    assert _outcomes(agent) == {"failed": 1.0, "held_back": 4.0, "started": 1.0}
    await agent.backend.close()


async def test_a_repeated_update_is_not_applied_twice() -> None:
    agent = _agent()
    await agent.backend.start()
    await agent._apply(MODEL, 1, Knobs(max_batch_size=2, instances=1))
    await agent._apply(MODEL, 1, Knobs(max_batch_size=2, instances=1))
    assert (agent.apply_attempts, agent.held_back) == (1, 0)
    await agent.backend.close()
