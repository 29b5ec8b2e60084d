"""The one rule every registry (tasks, models, merge methods) follows: a name is added once."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def add_unique(registry: dict[str, T], name: str, value: T, kind: str) -> T:
    """Put ``value`` under ``name`` in ``registry``; a name already there is a programming error.

    Raises:
        ValueError: ``"<kind> '<name>' is already registered"``.
    """
    if name in registry:
        raise ValueError(f"{kind} {name!r} is already registered")
    registry[name] = value
    return value
