"""What the admin API accepts as a name, and how it quotes what it refuses.

A refusal names the field and shows the value, but never echoes a large input back: an
error message with a 100 kB model name in it is itself a fault (#15). Pure functions: the
service calls them before it changes anything, so a refused request stores nothing.
"""

from __future__ import annotations

from dnnscaler.core.types import SHOWN_CHARS, InvalidValue, shown

__all__ = ["MAX_NAME_CHARS", "SHOWN_CHARS", "check_name", "shown"]

MAX_NAME_CHARS = 256  # model and agent names: Triton's own names are far shorter


def check_name(field: str, value: str, *, required: bool = True) -> None:
    """Raise ``InvalidValue`` for an empty (when ``required``), overlong or unprintable name."""
    if not value:
        if required:
            raise InvalidValue(field, "must not be empty")
        return
    if len(value) > MAX_NAME_CHARS:
        raise InvalidValue(
            field, f"at most {MAX_NAME_CHARS} characters, got {len(value)}: {shown(value)}"
        )
    if not value.isprintable():
        raise InvalidValue(field, f"must be printable, got {shown(value)}")
