"""Start-up validation names the offending field."""

from __future__ import annotations

import pytest

from dnnscaler.agents.config import AgentConfig
from dnnscaler.cli import main
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.core.types import InvalidValue


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"report_interval_s": 0}, "report_interval_s"),
        ({"stale_after_s": 0.5}, "stale_after_s"),
        ({"default_slo_ms": -1}, "default_slo_ms"),
        ({"default_percentile": 100}, "default_percentile"),
        ({"default_policy": "nope"}, "default_policy"),
        ({"listen": "nohostport"}, "listen"),
    ],
)
def test_controller_config_rejects(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidValue) as e:
        ControllerConfig(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"controller": "x"}, "controller"),
        ({"gpu_index": -1}, "gpu_index"),
        ({"backoff_initial_s": 2, "backoff_max_s": 1}, "backoff_max_s"),
        ({"backend_timeout_s": 0}, "backend_timeout_s"),
    ],
)
def test_agent_config_rejects(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidValue) as e:
        AgentConfig(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_cli_reports_bad_config_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controller", "--report-interval-s", "-1"]) == 2
    assert "report_interval_s" in capsys.readouterr().err
    assert main(["agent", "--sim-model", "bad-spec"]) == 2
    assert "--sim-model" in capsys.readouterr().err  # the flag that gave it
