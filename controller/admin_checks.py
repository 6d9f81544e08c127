"""What the admin API accepts as a name, and how it quotes what it refuses.

A refusal names the field and shows the value, but never echoes a large input back: an
error message with a 100 kB model name in it is itself a fault (#15). Pure functions: the
service calls them before it changes anything, so a refused request stores nothing.
"""

from __future__ import annotations

from dnnscaler.core.types import InvalidValue

MAX_NAME_CHARS = 256  # model and agent names: Triton's own names are far shorter
SHOWN_CHARS = 64  # how much of a refused value an error message quotes


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


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
