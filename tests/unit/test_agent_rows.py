"""`dnnscaler status`'s agent table says which agents are connected, lost (silent past the
controller's stale_after_s, their models' state kept) or only disconnected (#18)."""

from __future__ import annotations

from rich.console import Console

from dnnscaler.admin_cli import agent_rows
from dnnscaler.v1 import admin_pb2


def _connected_column(agent: admin_pb2.AgentStatus) -> str:
    console = Console(width=300, record=True)
    console.print(agent_rows([agent]))
    (row,) = [line for line in console.export_text().splitlines() if agent.agent_id in line]
    return row.split("│")[5].strip()


def test_the_connected_column_tells_lost_from_disconnected() -> None:
    assert _connected_column(admin_pb2.AgentStatus(agent_id="gpu-a", connected=True)) == "yes"
    assert _connected_column(admin_pb2.AgentStatus(agent_id="gpu-b", connected=False)) == "no"
    lost = admin_pb2.AgentStatus(agent_id="gpu-c", connected=False, lost=True)
    assert _connected_column(lost) == "lost"
