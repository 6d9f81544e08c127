"""The controller's registry: reading a model's settings stores nothing."""

from __future__ import annotations

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.registry import Registry
from dnnscaler.core.types import Slo


def test_reading_settings_returns_defaults_without_storing_them() -> None:
    reg = Registry(ControllerConfig(default_slo_ms=80.0))
    s = reg.settings_for("m")
    assert s.slo == Slo(80.0, 99.0) and s.policy == "dnnscaler"
    assert reg.settings == {}


def test_edited_settings_are_stored_and_read_back() -> None:
    reg = Registry(ControllerConfig())
    reg.edit_settings("m").slo = Slo(25.0, 95.0)
    assert reg.settings_for("m").slo == Slo(25.0, 95.0)
    assert reg.edit_settings("m") is reg.settings_for("m")
    assert list(reg.settings) == ["m"]
