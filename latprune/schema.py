"""Checks for the fields of files latprune reads (plans, pruned models, cached tables): each wrong type or
value is one :class:`LatpruneError` naming the file and the field, never a traceback later on.

JSON and pickled payloads come from outside; ``bool`` is refused where a number is expected (it is an
``int`` to Python), and floats are never truncated to integers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from latprune.errors import LatpruneError


def _fail(source: str, field: str, expected: str, value: Any) -> LatpruneError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return LatpruneError(f"{source}: {field} must be {expected}, got {shown}")


def integer(value: Any, source: str, field: str, minimum: int | None = None) -> int:
    """An ``int`` (not a bool, not a float), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(source, field, "an integer", value)
    if minimum is not None and value < minimum:
        raise _fail(source, field, f"at least {minimum}", value)
    return value


def number(value: Any, source: str, field: str, minimum: float | None = None, optional: bool = False) -> float | None:
    """A finite ``int`` or ``float`` (not a bool), at least ``minimum``; None allowed when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, field, "a finite number", value)
    if minimum is not None and value < minimum:
        raise _fail(source, field, f"at least {minimum:g}", value)
    return float(value)


def text(value: Any, source: str, field: str, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _fail(source, field, "a non-empty string" if not empty else "a string", value)
    return value


def integers(value: Any, source: str, field: str, minimum: int | None = None) -> list[int]:
    """A list of integers (each as :func:`integer`)."""
    if not isinstance(value, (list, tuple)):
        raise _fail(source, field, "a list of integers", value)
    return [integer(v, source, f"{field}[{i}]", minimum) for i, v in enumerate(value)]


def mapping(value: Any, source: str, field: str) -> Mapping:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(source, field, "an object with string keys", value)
    return value


def input_shape(value: Any, source: str, field: str = "input_shape") -> tuple[int, ...]:
    """An input shape: four positive integers NxCxHxW."""
    shape = integers(value, source, field, minimum=1)
    if len(shape) != 4:
        raise _fail(source, field, "four positive sizes NxCxHxW", value)
    return tuple(shape)


def version(value: Any, source: str, newest: int) -> int:
    """A file format version this latprune reads (an integer, at most ``newest``)."""
    found = integer(value, source, "version", minimum=1)
    if found > newest:
        raise LatpruneError(f"{source} was written by a newer latprune (format {found}, this one reads up to "
                            f"{newest})")
    return found
