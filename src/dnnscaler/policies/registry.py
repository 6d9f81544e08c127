"""Policies by name, for the controller, the CLI and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dnnscaler.core.types import Knobs
from dnnscaler.policies.aimd import AimdPolicy, AimdState
from dnnscaler.policies.base import Policy
from dnnscaler.policies.dnnscaler_policy import DnnScalerPolicy, DnnScalerState
from dnnscaler.policies.paper import PaperPolicy, PaperState
from dnnscaler.policies.static import StaticPolicy, StaticState

POLICY_NAMES: tuple[str, ...] = ("dnnscaler", "paper", "aimd", "static")
DEFAULT_POLICY = "dnnscaler"


def _static(**params: Any) -> StaticPolicy:
    knobs = params.pop("knobs", Knobs())
    if not isinstance(knobs, Knobs):
        raise ValueError(f"static: knobs must be a Knobs, got {type(knobs).__name__}")
    return StaticPolicy(knobs=knobs, **params)


_FACTORIES: dict[str, Callable[..., Any]] = {
    "dnnscaler": DnnScalerPolicy,
    "paper": PaperPolicy,
    "aimd": AimdPolicy,
    "static": _static,
}


# Each policy's state class: what a stored state decodes into (``core.state_codec``).
STATE_TYPES: dict[str, type] = {
    "dnnscaler": DnnScalerState,
    "paper": PaperState,
    "aimd": AimdState,
    "static": StaticState,
}


def make_policy(name: str, **params: Any) -> Policy[Any]:
    """A policy by name; ``params`` are its dataclass fields (``static`` takes ``knobs``).

    Raises ``ValueError`` naming the valid policies for an unknown name, and for a
    parameter the policy does not take.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICY_NAMES)}")
    try:
        policy: Policy[Any] = factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for policy {name!r}: {exc}") from exc
    return policy
